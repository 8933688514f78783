"""``stepdown run``: a JSONL round trip, task errors, bad input, and --resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.outputs import read_output

pytestmark = pytest.mark.timeout(120)

JOB = textwrap.dedent(
    """
    import os, time, uuid

    CALLS = os.environ.get("CALLS_DIR")

    def score(item):
        if CALLS:
            open(os.path.join(CALLS, f"{item['n']}-{uuid.uuid4().hex}"), "x").close()
        time.sleep(item.get("sleep", 0))
        if item.get("bad"):
            raise ValueError(f"bad item {item['n']}")
        return {"double": item["n"] * 2}
    """
)


def write_items(path: Path, n: int, **extra: object) -> None:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"n": i, **extra}) + "\n")


def stepdown_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stepdown", *args]


@pytest.fixture
def job(tmp_path: Path) -> Path:
    (tmp_path / "job.py").write_text(JOB)
    return tmp_path


def run_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        stepdown_cmd(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_round_trip(job: Path) -> None:
    write_items(job / "items.jsonl", 60)
    out = run_cli(
        job,
        "run",
        "job:score",
        "-i",
        "items.jsonl",
        "-o",
        "out.jsonl",
        "--ladder",
        "loky:2,thread:2",
    )
    assert out.returncode == 0, out.stderr
    records = read_output(job / "out.jsonl")
    assert {i: r["result"] for i, r in records.items()} == {i: {"double": 2 * i} for i in range(60)}
    assert "60 tasks" in out.stderr


def test_task_errors_are_recorded_and_exit_1(job: Path) -> None:
    with (job / "items.jsonl").open("w") as handle:
        for i in range(10):
            handle.write(json.dumps({"n": i, "bad": i == 3}) + "\n")
    out = run_cli(
        job, "run", "job:score", "-i", "items.jsonl", "-o", "out.jsonl", "--ladder", "process:2"
    )
    assert out.returncode == 1
    records = read_output(job / "out.jsonl")
    assert set(records) == set(range(10))
    error = records[3]["error"]
    assert isinstance(error, dict)
    assert error["type"] == "ValueError" and error["message"] == "bad item 3"
    assert "raise ValueError" in str(error["traceback"])


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("badjson", ["job:score"], "items.jsonl:3: not JSON"),
        ("none", ["job:score"], "cannot read input items.jsonl"),
        ("ok", ["nosuchmodule:score"], "cannot import module 'nosuchmodule'"),
        ("ok", ["job:nothing"], "module 'job' has no attribute 'nothing'"),
        ("ok", ["job:os"], "'job:os' is not callable"),
        ("ok", ["job"], "expected MODULE:FUNCTION"),
    ],
)
def test_bad_input_is_one_line_exit_2(job: Path, setup: str, args: list[str], message: str) -> None:
    if setup == "ok":
        write_items(job / "items.jsonl", 3)
    elif setup == "badjson":
        (job / "items.jsonl").write_text('{"n": 0}\n{"n": 1}\n{"n": \n')
    out = run_cli(job, "run", *args, "-i", "items.jsonl", "-o", "out.jsonl")
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_resume_after_kill_9(job: Path) -> None:
    calls = job / "calls"
    calls.mkdir()
    write_items(job / "items.jsonl", 80, sleep=0.05)
    env = {**os.environ, "CALLS_DIR": str(calls)}
    process = subprocess.Popen(
        stepdown_cmd(
            "run", "job:score", "-i", "items.jsonl", "-o", "out.jsonl", "--ladder", "loky:2"
        ),
        cwd=job,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    output = job / "out.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if output.exists() and output.read_text().count("\n") >= 20:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = read_output(output)
    assert 20 <= len(before) < 80
    with output.open("a") as handle:
        handle.write('{"index": 79, "res')  # a write torn by the crash
    out = run_cli(
        job,
        "run",
        "job:score",
        "-i",
        "items.jsonl",
        "-o",
        "out.jsonl",
        "--resume",
        "--ladder",
        "loky:2",
        env={"CALLS_DIR": str(calls)},
    )
    assert out.returncode == 0, out.stderr
    after = read_output(output)
    assert {i: r["result"] for i, r in after.items()} == {i: {"double": 2 * i} for i in range(80)}
    ran: dict[int, int] = {}
    for name in os.listdir(calls):
        index = int(name.split("-")[0])
        ran[index] = ran.get(index, 0) + 1
    # What was already written before the kill was not run again.
    assert all(ran[i] == 1 for i in before)
    assert f"resumed: {len(before)} items" in out.stderr


def test_output_exists_without_resume_is_refused(job: Path) -> None:
    write_items(job / "items.jsonl", 3)
    (job / "out.jsonl").write_text('{"index": 0, "result": 0}\n')
    out = run_cli(job, "run", "job:score", "-i", "items.jsonl", "-o", "out.jsonl")
    assert out.returncode == 2
    assert "pass --resume" in out.stderr


def test_task_timeout_records_the_hung_item_and_goes_on(job: Path) -> None:
    with (job / "items.jsonl").open("w") as handle:
        for i in range(6):
            handle.write(json.dumps({"n": i, "sleep": 600 if i == 2 else 0}) + "\n")
    began = time.monotonic()
    out = run_cli(
        job,
        "run",
        "job:score",
        "-i",
        "items.jsonl",
        "-o",
        "out.jsonl",
        "--ladder",
        "loky:2",
        "--task-timeout",
        "1",
    )
    assert time.monotonic() - began < 60
    assert out.returncode == 1, out.stderr
    records = read_output(job / "out.jsonl")
    assert records[2]["error"]["type"] == "TaskTimeout"  # type: ignore[index]
    assert {i: r["result"] for i, r in records.items() if i != 2} == {
        i: {"double": 2 * i} for i in range(6) if i != 2
    }
    assert "1 ran over task_timeout" in out.stderr
