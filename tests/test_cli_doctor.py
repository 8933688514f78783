"""``stepdown doctor`` and ``stepdown plan``: what they see, what they plan, how they fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.cgroups import Cgroup, skip_unless_cgroups

pytestmark = pytest.mark.timeout(60)

GIB = 1024**3


def stepdown(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepdown", *args],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_doctor_text_names_sources_backends_and_plans() -> None:
    out = stepdown("doctor")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("sched_getaffinity", "loky", "policy", "profile", "  1 tasks:", " 64 tasks:"):
        assert needle in text, needle


def test_doctor_json() -> None:
    out = stepdown("doctor", "--json", env={"STEPDOWN_CPUS": "3"})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["resources"]["cpus"] == {"value": 3, "source": "STEPDOWN_CPUS"}
    assert {b["name"] for b in report["backends"]} >= {"sequential", "thread", "process", "loky"}
    assert set(report["plans"]) == {"1", "4", "64"}


def test_doctor_inside_a_cgroup_of_one_cpu_and_2_gib() -> None:
    skip_unless_cgroups("cpu", "memory")
    with Cgroup("cpu", "memory") as group:
        group.set_cpu_quota(1)
        group.set_memory_limit(2 * GIB)
        done = group.run_python(
            "import sys; from stepdown.cli.main import main; sys.exit(main(['doctor', '--json']))"
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["resources"]["cpus"]["value"] == 1
    assert "cfs_quota_us" in report["resources"]["cpus"]["source"]
    assert report["resources"]["memory_limit"]["value"] <= 2 * GIB
    assert report["resources"]["memory_available"]["value"] <= 2 * GIB
    for n in ("4", "64"):
        workers = [r["workers"] for r in report["plans"][n]["rungs"] if r["workers"]]
        assert max(workers) == 1, report["plans"][n]


def test_plan_json_and_text() -> None:
    out = stepdown("plan", "--tasks", "6", "--profile", "kaggle", "--json")
    assert out.returncode == 0, out.stderr
    chosen = json.loads(out.stdout)
    assert chosen["profile"] == "kaggle"
    # A small single-threaded caller: start_method auto forks.
    assert [r["backend"] for r in chosen["rungs"]] == ["process", "thread", "sequential"]
    text = stepdown("plan", "--tasks", "3", "--profile", "kaggle").stdout
    assert "thread(" in text and "tasks_below = 4" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "--tasks", "-1"], "--tasks must be 0 or more"),
        (["plan", "--profile", "nope"], "unknown profile 'nope'"),
        (["plan", "--tasks", "x"], "invalid int value"),
        (["nonsense"], "invalid choice"),
        (["plan", "--policy", "/nonexistent.toml"], "/nonexistent.toml"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    out = stepdown(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_policy_file_names_file_and_key(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "stepdown.toml")
    with open(path, "w") as handle:
        handle.write('[profiles.mine]\n[[profiles.mine.rules]]\nladder = ["lokky:2"]\n')
    out = stepdown("plan", "--policy", path, "--profile", "mine")
    assert out.returncode == 2
    assert path in out.stderr and "profiles.mine.rules[0].ladder[0]" in out.stderr


def test_doctor_shows_start_up_costs_and_where_they_come_from() -> None:
    out = stepdown("doctor")
    assert out.returncode == 0, out.stderr
    section = out.stdout.split("\nstart-up", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = {line.split()[0]: line for line in section[1:] if not line.startswith("  cached")}
    assert set(rows) >= {"fork", "forkserver", "spawn", "loky", "thread", "ray"}
    assert all("[default: not measured on this host]" in rows[k] for k in ("fork", "loky", "ray"))
    runtime = os.environ["XDG_RUNTIME_DIR"]
    assert f"cached in {runtime}/stepdown/.startup-costs.json" in section[-1]

    code = (
        "from stepdown.cli.doctor import doctor; "
        "print(doctor(measure_startup=['thread']).explain())"
    )
    measured = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=False
    )
    assert measured.returncode == 0, measured.stderr
    start_up = measured.stdout.split("\nstart-up", 1)[1].split("\n\n", 1)[0]
    thread = next(line for line in start_up.splitlines() if line.startswith("  thread "))
    assert " by stepdown doctor]" in thread and "[measured " in thread

    report = json.loads(stepdown("doctor", "--json").stdout)["startup"]
    assert report["cache"] == f"{runtime}/stepdown/.startup-costs.json"
    assert report["kinds"]["thread"]["source"].endswith(" by stepdown doctor")
    assert report["kinds"]["thread"]["start"] > 0
    assert report["kinds"]["loky"]["source"] == "default: not measured on this host"
