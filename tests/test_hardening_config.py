"""Hostile or mistyped configuration: deep policies, unbounded sizes, files that are not files,
another local user squatting on the budget's directory, and sizes that must read in units.

Each case runs the real command in a subprocess (``python -m stepdown``) with the real file
(a FIFO, ``/dev/zero``, a 5,000-deep TOML) or environment; where the old code ran out of memory,
the subprocess has an address-space limit, so that a regression fails the test instead of
taking the machine. The budget cases run as a second, unprivileged user (uid 1001) against a
directory really owned by a third (uid 1002) in a sticky temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepdown
from stepdown.errors import PolicyError
from stepdown.planning.planner import make_plan
from stepdown.planning.policy import load_policy
from stepdown.planning.resources import Environment, Reading, Resources

pytestmark = pytest.mark.timeout(120)

DEEP = 5000
# Enough for `stepdown plan` many times over; a list of a billion slot names is not.
ADDRESS_SPACE = 2 * 1024**3


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def stepdown_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m stepdown ARGS`` with a memory bound, without XDG_RUNTIME_DIR or a policy of
    the caller's environment leaking in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STEPDOWN_")}
    return subprocess.run(
        [sys.executable, "-m", "stepdown", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        cwd=cwd,
        preexec_fn=_limited,
        check=False,
    )


def one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 and a single ``stepdown: ...`` line on stderr that holds every needle."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-2000:]
    [line] = lines
    assert line.startswith("stepdown: ")
    assert len(line) < 400
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def deep_toml(path: Path, *, section: str = "") -> Path:
    nested = "[" * DEEP + "]" * DEEP
    header = f"[{section}]\n" if section else ""
    path.write_text(f'{header}profile = "laptop"\nx = {nested}\n')
    return path


# ---- 11: a policy nested 5,000 deep ------------------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "doctor"])
@pytest.mark.parametrize("given", ["--policy", "STEPDOWN_POLICY"])
def test_a_policy_nested_5000_deep_is_one_line_and_exit_2(
    tmp_path: Path, command: str, given: str
) -> None:
    path = deep_toml(tmp_path / "deep.toml")
    if given == "--policy":
        out = stepdown_cli(command, "--policy", str(path), cwd=tmp_path)
    else:
        out = stepdown_cli(command, env={"STEPDOWN_POLICY": str(path)}, cwd=tmp_path)
    one_line_error(out, str(path), "nested too deeply")


def test_a_pyproject_nested_5000_deep_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = deep_toml(tmp_path / "pyproject.toml", section="tool.stepdown")
    one_line_error(stepdown_cli("plan", cwd=tmp_path), str(path), "nested too deeply")


def test_deep_policies_are_policy_errors_from_the_api(tmp_path: Path) -> None:
    path = deep_toml(tmp_path / "deep.toml")
    with pytest.raises(PolicyError, match="nested too deeply") as caught:
        stepdown.plan(tasks=4, policy=path)
    assert caught.value.source == str(path)
    # A table in code: a key or a value too deep to print in the message.
    key: tuple[object, ...] = ()
    value: list[object] = []
    for _ in range(100_000):
        key, value = (key,), [value]
    for table in (
        {"profiles": {key: {}}},
        {"profiles": {"p": {"rules": [{"ladder": [{"backend": "loky", key: 1}]}]}}},
        {"profiles": {"p": {"rules": [{"ladder": [{"backend": value}]}]}}},
    ):
        with pytest.raises(PolicyError, match="too deeply nested or too long to show"):
            load_policy(table)


# ---- 12: sizes read from the environment or a file are bounded ----------------------------------


def runtime_dir(tmp_path: Path) -> dict[str, str]:
    """An XDG_RUNTIME_DIR whose default budget has run before: its directory exists, so a plan
    reads who holds its slots."""
    (tmp_path / "stepdown" / "default").mkdir(mode=0o700, parents=True)
    (tmp_path / "stepdown").chmod(0o700)
    return {"XDG_RUNTIME_DIR": str(tmp_path)}


def test_a_billion_host_workers_is_refused_without_building_them(tmp_path: Path) -> None:
    env = {**runtime_dir(tmp_path), "STEPDOWN_HOST_WORKERS": "1000000000"}
    out = stepdown_cli("plan", "--profile", "kaggle", env=env)
    one_line_error(out, "STEPDOWN_HOST_WORKERS", "'1000000000'", "8192")


def test_a_billion_slot_budget_in_a_policy_is_refused(tmp_path: Path) -> None:
    policy = tmp_path / "big.toml"
    policy.write_text(
        "[profiles.big]\nbudget = { enabled = true, size = 1000000000 }\n"
        '[[profiles.big.rules]]\nladder = ["thread:2"]\n'
    )
    out = stepdown_cli(
        "plan", "--policy", str(policy), "--profile", "big", env=runtime_dir(tmp_path)
    )
    one_line_error(out, str(policy), "profiles.big.budget.size", "1000000000", "8192")


@pytest.mark.parametrize("value", ["1" + "0" * 30, "9" * 5000])
def test_a_huge_cpu_count_is_refused(value: str, tmp_path: Path) -> None:
    env = {**runtime_dir(tmp_path), "STEPDOWN_CPUS": value}
    out = stepdown_cli("plan", "--profile", "server", "--json", env=env)
    line = one_line_error(out, "STEPDOWN_CPUS=", "from 1 to 8192")
    assert len(line) < 300


@pytest.mark.parametrize("name", ["STEPDOWN_MEMORY", "STEPDOWN_SHM", "STEPDOWN_MEMORY_LIMIT"])
def test_a_size_too_long_for_a_float_is_refused(name: str) -> None:
    out = stepdown_cli("plan", "--json", env={name: "9" * 400})
    line = one_line_error(out, f"{name}=", "at most 1 EiB")
    assert len(line) < 300


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory"])
@pytest.mark.parametrize("given", ["STEPDOWN_POLICY", "stepdown.toml"])
def test_a_policy_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, kind: str, given: str
) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    path = tmp_path / "policy.toml" if given == "STEPDOWN_POLICY" else cwd / "stepdown.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(kind)
    env = {"STEPDOWN_POLICY": str(path)} if given == "STEPDOWN_POLICY" else {}
    out = stepdown_cli("plan", env=env, cwd=cwd, timeout=30)
    expected = {"fifo": "a FIFO", "/dev/zero": "a character device", "directory": "a directory"}
    one_line_error(out, str(path), expected[kind], "not a regular file")


def test_a_policy_file_over_a_mebibyte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_text('profile = "laptop"\n' + "# padding\n" * 120_000)
    one_line_error(stepdown_cli("plan", "--policy", str(path)), str(path), "larger than 1.0 MiB")


# ---- 13: another local user squats on the budget's directory ------------------------------------

USER_B, USER_A = 1001, 1002


def _as_b(args: list[str], scene: dict[str, Path], **kwargs: object) -> subprocess.Popen[str]:
    """Run ``args`` as user B. B keeps only CAP_DAC_READ_SEARCH, which it needs to reach this
    interpreter under /root; it gives no right to write, chown, or remove another's files."""
    env = {"HOME": str(scene["home"]), "TMPDIR": str(scene["tmp"]), "PATH": os.environ["PATH"]}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(kwargs.pop("env", {}))  # type: ignore[call-overload]
    privileges = [
        "setpriv",
        f"--reuid={USER_B}",
        f"--regid={USER_B}",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
    ]
    return subprocess.Popen(
        [*privileges, sys.executable, *args],
        env=env,
        cwd=scene["base"],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )


def run_as_b(args: list[str], scene: dict[str, Path], **kwargs: object) -> tuple[int, str, str]:
    with _as_b(args, scene, **kwargs) as process:
        out, err = process.communicate(timeout=60)
    return process.returncode, out, err


@pytest.fixture(params=["directory", "symlink", "file"])
def scene(request: pytest.FixtureRequest) -> Iterator[dict[str, Path]]:
    """A sticky temporary directory in which user A has made ``stepdown-<uid of B>`` (a
    directory, a link to A's own directory, or a file), and B's private home."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (to own files as other users) and setpriv")
    base = Path(tempfile.mkdtemp(prefix="stepdown-squat-"))
    try:
        base.chmod(0o755)
        tmp, home = base / "tmp", base / "home"
        tmp.mkdir()
        tmp.chmod(0o1777)
        home.mkdir(mode=0o700)
        os.chown(home, USER_B, USER_B)
        squat = tmp / f"stepdown-{USER_B}"
        if request.param == "directory":
            squat.mkdir(mode=0o755)
        elif request.param == "symlink":
            (base / "a-own").mkdir(mode=0o755)
            os.chown(base / "a-own", USER_A, USER_A)
            squat.symlink_to(base / "a-own")
        else:
            squat.write_text("")
        os.chown(squat, USER_A, USER_A, follow_symlinks=False)
        yield {"base": base, "tmp": tmp, "home": home, "squat": squat}
    finally:
        shutil.rmtree(base)


def _untouched(scene: dict[str, Path]) -> None:
    squat = scene["squat"]
    st = os.lstat(squat)
    assert st.st_uid == USER_A
    if stat.S_ISDIR(st.st_mode):
        assert list(squat.iterdir()) == []
    if squat.is_symlink():
        assert list(squat.resolve().iterdir()) == []


def _fallback(scene: dict[str, Path]) -> Path:
    [made] = (scene["home"] / ".cache" / "stepdown").glob("run-*")
    st = made.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (USER_B, 0o700)
    return made


RUN = """
import stepdown
run = stepdown.run(abs, range(-6, 6), profile="kaggle", ladder=["thread:2"])
print(run.results, run.report.final_rung)
"""


def test_another_users_directory_does_not_block_a_budgeted_run(scene: dict[str, Path]) -> None:
    squat = str(scene["squat"])
    remove = f"import os; (os.rmdir if os.path.isdir({squat!r}) else os.unlink)({squat!r})"
    code, _, err = run_as_b(["-c", remove], scene)  # the sticky bit: B cannot clear the way
    assert code != 0 and "Operation not permitted" in err
    code, out, err = run_as_b(["-c", RUN], scene)
    assert code == 0, err
    assert out.strip() == f"{[abs(x) for x in range(-6, 6)]} thread(2)"
    made = _fallback(scene)
    [warning] = err.strip().splitlines()
    assert str(scene["squat"]) in warning
    assert str(made) in warning
    # The run took its slots there, and a later command finds the same place.
    assert sorted(p.name for p in (made / "default").iterdir()) == ["slot-0", "slot-1"]
    code, out, err = run_as_b(["-m", "stepdown", "plan", "--profile", "kaggle"], scene)
    assert (code, err) == (0, "")
    assert "1. process(2) start_method=fork" in out  # kaggle, start_method auto
    _untouched(scene)


def test_doctor_shows_the_squatted_directory_as_a_finding(scene: dict[str, Path]) -> None:
    code, out, err = run_as_b(["-m", "stepdown", "doctor", "--profile", "kaggle"], scene)
    assert code == 0, err
    made = _fallback(scene)
    budget = out.split("\nhost budget\n", 1)[1].split("\n\n", 1)[0]
    assert f"at {made}/default" in budget
    [finding] = [line for line in budget.splitlines() if line.startswith("  finding: ")]
    assert str(scene["squat"]) in finding
    assert f"budgets are in {made}" in finding
    _untouched(scene)


HOLD = """
import sys, json
from stepdown.budget.budget import Budget
budget = Budget.from_env(1)
grant = budget.acquire(1, label="holder")
print(json.dumps({"directory": str(budget.directory), "count": grant.count}), flush=True)
sys.stdin.readline()
"""


@pytest.mark.timeout(90)
def test_instances_of_the_user_share_the_fallback_budget(scene: dict[str, Path]) -> None:
    env = {"STEPDOWN_HOST_WORKERS": "1"}
    with _as_b(["-c", HOLD], scene, env=env) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        held = json.loads(holder.stdout.readline())
        assert held["count"] == 1
        assert held["directory"].startswith(str(scene["home"]))
        code, out, err = run_as_b(
            ["-m", "stepdown", "doctor", "--profile", "kaggle", "--json"], scene, env=env
        )
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
    assert code == 0, err
    budget = json.loads(out)["budget"]
    assert budget["directory"] == held["directory"]
    assert [s["pid"] for s in budget["status"]["slots"]] == [holder.pid]
    assert budget["status"]["free"] == 0
    _untouched(scene)


def test_without_a_private_home_the_run_goes_on_without_a_budget(
    scene: dict[str, Path],
) -> None:
    scene["home"].chmod(0o777)  # writable by anyone: no safe place for a fallback
    code, out, err = run_as_b(["-c", RUN], scene)
    assert code == 0, err
    assert out.strip() == f"{[abs(x) for x in range(-6, 6)]} thread(2)"
    [warning] = err.strip().splitlines()
    assert str(scene["squat"]) in warning
    assert "running without a host budget" in warning
    assert not (scene["home"] / ".cache").exists()
    _untouched(scene)


# ---- 14: sizes in plans read in units ---------------------------------------------------------


def test_a_huge_size_in_a_plan_reads_in_units(tmp_path: Path) -> None:
    out = stepdown_cli("plan", "--tasks", "4", env={"STEPDOWN_MEMORY": str(1024**6)})
    assert out.returncode == 0, out.stderr
    assert "1.0 EiB free [STEPDOWN_MEMORY]" in out.stdout
    resources = Resources(
        cpus=Reading(4, "test"),
        memory_available=Reading(8 * 1024**3, "test"),
        memory_limit=Reading(None, "test"),
        tasks_left=Reading(None, "test"),
        shm_free=Reading(None, "test"),
        caller_rss=Reading(10**85, "test"),
        env=Environment(kaggle=False, ci=False, ray_address=None, container=False),
        cgroup_version=None,
        cgroup_paths={},
    )
    policy = load_policy(environ={}, cwd=tmp_path)
    chosen = make_plan(policy, policy.profiles["laptop"], resources, 40, task_memory=10**85)
    skipped = [p.reason for p in chosen.rungs if p.skipped]
    assert skipped and all("EiB" in reason for reason in skipped)
    assert re.search(r"\d{8}", chosen.explain()) is None, chosen.explain()
