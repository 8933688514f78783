"""The CLI as a careful tool: version and help, ``run --retry-errors``, ``-`` for stdin and
stdout, ``--report-json``, ``plan`` with its budget and labels in lines that fit, ``doctor``'s
budget wording, and one rule for every ``STEPDOWN_*`` variable.

Every case runs the real command (``python -m stepdown``) in a subprocess, with real
environment variables and files in ``tmp_path``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import stepdown
from stepdown.cli.parser import parser

from tests.support.outputs import read_output

pytestmark = pytest.mark.timeout(120)

DOCS = Path(__file__).parent.parent / "docs"
SRC = Path(stepdown.__file__).parent

# Fails an item whose number is in FAIL (a comma-separated list); records each call in CALLS.
JOB = textwrap.dedent(
    """
    import os, uuid

    def score(item):
        calls = os.environ.get("CALLS")
        if calls:
            open(os.path.join(calls, f"{item['n']}-{uuid.uuid4().hex}"), "x").close()
        if str(item["n"]) in os.environ.get("FAIL", "").split(","):
            raise ValueError(f"bad item {item['n']}")
        return item["n"] * 2
    """
)


def stepdown_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m stepdown ARGS``, without a STEPDOWN_* variable of the caller's leaking in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STEPDOWN_")}
    return subprocess.run(
        [sys.executable, "-m", "stepdown", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=100,
        env={**base, **(env or {})},
        cwd=cwd,
        check=False,
    )


def flat(text: str) -> str:
    """The text with its lines joined and runs of spaces made one: wrapping undone."""
    return " ".join(text.split())


def one_line_error(out: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-2000:])
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("stepdown: ")
    for phrase in phrases:
        assert phrase in line
    return line


# ---- version and help ------------------------------------------------------------------------


def test_version() -> None:
    out = stepdown_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"stepdown {stepdown.__version__}"


def test_a_bare_command_prints_the_help_and_exits_2() -> None:
    out = stepdown_cli()
    assert out.returncode == 2
    assert out.stdout.startswith("usage: stepdown")
    for command in ("doctor", "plan", "run", "bench", "demo"):
        assert re.search(rf"^\s+{command}\s+\S", out.stdout, re.MULTILINE), command
    assert "examples:" in out.stdout
    assert out.stderr == ""


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    top = parser()
    [sub] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_subcommand_has_a_description_an_example_and_help_for_every_option() -> None:
    commands = _subcommands()
    assert sorted(commands) == ["bench", "demo", "doctor", "plan", "run"]
    missing = []
    for name, command in commands.items():
        assert command.description, name
        assert command.epilog and command.epilog.startswith("example"), name
        assert f"stepdown {name}" in command.epilog or f"| stepdown {name}" in command.epilog
        for action in command._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    top_level = [a for a in parser()._actions if not isinstance(a, argparse._SubParsersAction)]
    assert all(a.help for a in top_level)


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_help_shows_the_example_and_the_help_of_options_that_had_none(command: str) -> None:
    out = stepdown_cli(command, "--help")
    assert out.returncode == 0
    assert re.search(r"^example:\n  stepdown " + command, out.stdout, re.MULTILINE)
    help_text = "how many tasks of ~20 ms CPU" if command == "bench" else "a progress bar on"
    assert help_text in " ".join(out.stdout.split())


# ---- stepdown run ----------------------------------------------------------------------------


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "calls").mkdir()
    with (tmp_path / "items.jsonl").open("w") as handle:
        for n in range(8):
            handle.write(json.dumps({"n": n}) + "\n")
    return tmp_path


def calls(job: Path) -> list[int]:
    return sorted(int(p.name.split("-")[0]) for p in (job / "calls").iterdir())


def test_resume_keeps_errors_and_says_so_retry_errors_runs_them_again(job: Path) -> None:
    run = ("run", "job:score", "-i", "items.jsonl", "-o", "out.jsonl", "--ladder", "thread:2")
    env = {"FAIL": "2,5", "CALLS": str(job / "calls")}
    first = stepdown_cli(*run, env=env, cwd=job)
    assert first.returncode == 1, first.stderr
    assert {i for i, r in read_output(job / "out.jsonl").items() if "error" in r} == {2, 5}

    # --resume alone: nothing runs again, and the errors still in the file make it exit 1.
    (job / "calls" / "keep").mkdir()
    for path in (job / "calls").glob("*-*"):
        path.rename(job / "calls" / "keep" / path.name)
    (job / "calls" / "keep").rename(job / "kept-calls")
    again = stepdown_cli(*run, "--resume", env={"CALLS": str(job / "calls")}, cwd=job)
    assert again.returncode == 1, again.stderr
    assert calls(job) == []
    assert "2 items in out.jsonl are errors from an earlier run" in again.stderr
    assert "--retry-errors" in again.stderr

    # --retry-errors: only the two failed items run again, and the file ends whole and clean.
    retry = stepdown_cli(*run, "--retry-errors", env={"CALLS": str(job / "calls")}, cwd=job)
    assert retry.returncode == 0, retry.stderr
    assert calls(job) == [2, 5]
    final = read_output(job / "out.jsonl")
    assert sorted(final) == list(range(8))
    assert all(final[i] == {"index": i, "result": i * 2} for i in range(8))
    assert "retried: 2 items whose line was an error" in retry.stderr


def test_stdin_and_stdout(job: Path) -> None:
    items = (job / "items.jsonl").read_text()
    out = stepdown_cli(
        "run", "job:score", "-i", "-", "-o", "-", "--ladder", "thread:2", cwd=job, stdin=items
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(8))
    assert all(r["result"] == r["index"] * 2 for r in lines)
    assert "8 tasks in" in out.stderr  # the report goes to stderr, never among the results


def test_report_json(job: Path) -> None:
    out = stepdown_cli(
        "run",
        "job:score",
        "-i",
        "items.jsonl",
        "-o",
        "out.jsonl",
        "--report-json",
        "report.json",
        "--ladder",
        "thread:2",
        env={"FAIL": "3"},
        cwd=job,
    )
    assert out.returncode == 1, out.stderr
    report = json.loads((job / "report.json").read_text())
    assert report["exit_code"] == 1
    assert (report["items"], report["written"], report["failed"]) == (8, 8, 1)
    assert (report["resumed"], report["retried_errors"], report["stopped"]) == (0, 0, None)
    assert report["report"]["tasks"] == 8
    assert report["report"]["task_errors"] == 1
    assert [r["label"] for r in report["report"]["rungs"]] == ["thread(2)"]
    assert report["summary"] in out.stderr

    to_stdout = stepdown_cli(
        "run", "job:score", "-i", "items.jsonl", "-o", "out2.jsonl", "--report-json", "-", cwd=job
    )
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert json.loads(to_stdout.stdout)["written"] == 8


@pytest.mark.parametrize(
    ("report", "phrase"),
    [("-", "would both write to stdout"), ("nowhere/report.json", "no directory nowhere")],
)
def test_report_json_refused_before_the_run(job: Path, report: str, phrase: str) -> None:
    out = stepdown_cli(
        "run",
        "job:score",
        "-i",
        "items.jsonl",
        "-o",
        "-",
        "--report-json",
        report,
        env={"CALLS": str(job / "calls")},
        cwd=job,
    )
    one_line_error(out, "--report-json", phrase)
    assert calls(job) == []


def test_progress_flag_reaches_the_run(job: Path) -> None:
    args = ("run", "job:score", "-i", "items.jsonl", "--ladder", "thread:2")
    shown = stepdown_cli(*args, "-o", "a.jsonl", "--progress", cwd=job)
    assert shown.returncode == 0, shown.stderr
    assert "8/8" in shown.stderr  # a bar, although stderr is a pipe
    hidden = stepdown_cli(*args, "-o", "b.jsonl", "--no-progress", cwd=job)
    assert hidden.returncode == 0, hidden.stderr
    assert "8/8" not in hidden.stderr


# ---- stepdown plan and doctor ----------------------------------------------------------------

LONG_POLICY = """
[profiles.wide]
[[profiles.wide.rules]]
ladder = [
    { backend = "process", start_method = "forkserver", memory_per_worker = "2GiB" },
    { backend = "process", start_method = "forkserver", fraction = 0.5 },
    "thread:auto",
]
"""


def test_plan_text_fits_100_columns_and_shows_the_budget(tmp_path: Path) -> None:
    (tmp_path / "wide.toml").write_text(LONG_POLICY)
    env = {"STEPDOWN_CPUS": "64", "XDG_RUNTIME_DIR": str(tmp_path)}
    args = ("--tasks", "400", "--policy", "wide.toml", "--profile", "wide")
    out = stepdown_cli("plan", *args, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "pids fit" in out.stdout  # the long reasons are there, wrapped
    # On in every profile, a user's own included, unless it says enabled = false.
    assert "budget on (profile wide shares one): 64 slots at " in flat(out.stdout)
    (tmp_path / "alone.toml").write_text(
        LONG_POLICY + "\n[profiles.wide.budget]\nenabled = false\n"
    )
    alone = stepdown_cli(
        "plan", *args[:2], "--policy", "alone.toml", *args[4:], env=env, cwd=tmp_path
    )
    budget = "budget off (profile wide does not share one); STEPDOWN_BUDGET=on would share 64 slots"
    assert budget in flat(alone.stdout), alone.stdout + alone.stderr
    kaggle = stepdown_cli("plan", "--tasks", "8", "--profile", "kaggle", env=env, cwd=tmp_path)
    assert "budget on (profile kaggle shares one): 64 slots at " in flat(kaggle.stdout)
    forced = stepdown_cli(
        "plan", "--profile", "kaggle", env={**env, "STEPDOWN_BUDGET": "off"}, cwd=tmp_path
    )
    assert "budget off (STEPDOWN_BUDGET=off); STEPDOWN_BUDGET=on would share" in flat(forced.stdout)


def test_plan_prints_sizes_in_units(tmp_path: Path) -> None:
    (tmp_path / "wide.toml").write_text(LONG_POLICY)
    out = stepdown_cli(
        "plan", "--tasks", "8", "--policy", "wide.toml", "--profile", "wide", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert str(2 * 1024**3) not in out.stdout
    assert "memory_per_worker=2.0GiB" in out.stdout


def test_plan_json_labels_rungs_and_has_the_budget(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "STEPDOWN_CPUS": "2"}
    out = stepdown_cli("plan", "--tasks", "8", "--profile", "kaggle", "--json", env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    labels = ["process(2) start_method=fork", "thread(2)", "sequential"]  # start_method auto
    assert [r["label"] for r in data["rungs"]] == labels
    budget = data["budget"]
    assert (budget["enabled"], budget["why"], budget["size"]) == (
        True,
        "profile kaggle shares one",
        2,
    )
    assert budget["directory"] == str(tmp_path / "stepdown" / "default")


def test_doctor_says_why_the_budget_is_on_or_off(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "STEPDOWN_CPUS": "2"}
    out = stepdown_cli("doctor", "--profile", "laptop", env=env)
    assert out.returncode == 0, out.stderr
    assert "(STEPDOWN_BUDGET=on)" not in out.stdout
    assert "on (profile laptop shares one): 2 slots at" in flat(out.stdout)
    forced = stepdown_cli("doctor", "--profile", "laptop", env={**env, "STEPDOWN_BUDGET": "0"})
    assert "off (STEPDOWN_BUDGET=0); STEPDOWN_BUDGET=on would share 2" in flat(forced.stdout)


# ---- STEPDOWN_* variables: one rule --------------------------------------------------------

BAD_VALUES = {
    "STEPDOWN_CPUS": "two",
    "STEPDOWN_MEMORY": "lots",
    "STEPDOWN_MEMORY_LIMIT": "-3",
    "STEPDOWN_TASKS_LEFT": "-1",
    "STEPDOWN_SHM": "1.5XB",
    "STEPDOWN_BUDGET": "maybe",
    "STEPDOWN_HOST_WORKERS": "many",
    "STEPDOWN_PROFILE": "colab",
    "STEPDOWN_POLICY": "no-such-policy.toml",
}


def test_every_variable_in_the_source_is_covered_here_and_in_one_docs_table() -> None:
    used = set()
    for path in SRC.rglob("*.py"):
        used |= set(re.findall(r"STEPDOWN_[A-Z_]+[A-Z]", path.read_text()))
    assert used == set(BAD_VALUES)
    table = [
        line for line in (DOCS / "deployment.md").read_text().splitlines() if line.startswith("|")
    ]
    documented = {m for line in table for m in re.findall(r"^\| `(STEPDOWN_[A-Z_]+)", line)}
    assert documented == used


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_bad_value_is_one_line_naming_the_variable_and_the_value(
    name: str, tmp_path: Path
) -> None:
    env = {name: BAD_VALUES[name], "XDG_RUNTIME_DIR": str(tmp_path)}
    if name == "STEPDOWN_HOST_WORKERS":
        env["STEPDOWN_BUDGET"] = "on"  # the size is read where a budget is used
    out = stepdown_cli("plan", "--tasks", "4", env=env, cwd=tmp_path)
    one_line_error(out, name, BAD_VALUES[name])
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["STEPDOWN_CPUS", "STEPDOWN_BUDGET", "STEPDOWN_PROFILE"])
def test_in_the_library_a_bad_value_is_a_usage_error(name: str, tmp_path: Path) -> None:
    code = (
        "import stepdown\n"
        "try:\n"
        "    stepdown.plan(tasks=4)\n"
        "except stepdown.UsageError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPDOWN_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, name: BAD_VALUES[name], "XDG_RUNTIME_DIR": str(tmp_path)},
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert name in out.stdout and BAD_VALUES[name] in out.stdout
    assert out.stderr == ""  # an error, not a warning beside a run


@pytest.mark.parametrize("value", ["", "   "])
def test_a_variable_set_to_nothing_is_unset(value: str, tmp_path: Path) -> None:
    env = dict.fromkeys(BAD_VALUES, value) | {"XDG_RUNTIME_DIR": str(tmp_path)}
    out = stepdown_cli("plan", "--tasks", "4", "--json", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert json.loads(out.stdout)["resources"]["cpus"]["source"] != "STEPDOWN_CPUS"
