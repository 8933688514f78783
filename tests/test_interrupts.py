"""A task's ``BaseException``, a user's Ctrl-C, and a caller that dies: for real.

- A task that raises ``asyncio.CancelledError``, its own ``BaseException`` subclass or calls
  ``sys.exit`` has that as its outcome, like any exception: the run goes on, nothing steps
  down, nothing runs twice. ``KeyboardInterrupt`` raised by a task stops the run instead.
- A Ctrl-C at a terminal (SIGINT to the whole process group) stops a run at once: nothing more
  starts, the workers go, ``KeyboardInterrupt`` reaches the caller and nothing else is printed.
- Workers die with their caller however it dies (SIGKILL, SIGTERM), nested runs included, and
  let go of its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import stepdown

from tests.support.processes import gone_within
from tests.support.signals import Stop, descendants, ends, start, wait_for_files
from tests.support.tasks import counting_dir, counts

pytestmark = pytest.mark.timeout(60)

LADDERS = {
    "process": ["process:2"],
    "loky": ["loky:2"],
    "thread": ["thread:2"],
    "sequential": ["sequential"],
}
KINDS: dict[str, type[BaseException]] = {
    "cancelled": asyncio.CancelledError,
    "stop": Stop,
    "exit": SystemExit,
}


def _no_step_down(log: pytest.LogCaptureFixture) -> None:
    lines = [r.message for r in log.records]
    assert not any("stepping down" in line or "broke" in line for line in lines), lines


@pytest.fixture
def strays() -> Iterator[list[psutil.Process]]:
    """Processes a test saw; any still running at its end (a failed test) is killed."""
    seen: list[psutil.Process] = []
    yield seen
    for process in seen:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()  # psutil checks it is still the same process, not a reused pid


def _watch(pid: int, strays: list[psutil.Process]) -> list[int]:
    """Every process below ``pid`` now, remembered for the clean-up."""
    found = descendants(pid)
    for child in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            strays.append(psutil.Process(child))
    return found


def _communicate(caller: subprocess.Popen[str], seconds: float) -> tuple[str, str]:
    """The caller's output once its pipes close; fails the test if they stay open."""
    try:
        return caller.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(caller.pid, signal.SIGKILL)
        caller.communicate()
        raise AssertionError(f"the caller's output was still open after {seconds} s") from None


# Item 5: a task's BaseException is its outcome.


@pytest.mark.parametrize("name", sorted(LADDERS))
def test_a_base_exception_is_the_task_outcome(
    name: str, tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    calls = counting_dir(tmp_path)
    raising = {3: "cancelled", 5: "stop", 7: "exit"}
    run = stepdown.run(
        ends, [(calls, i, raising) for i in range(10)], ladder=LADDERS[name], errors="return"
    )
    results = run.results
    assert isinstance(results[3], asyncio.CancelledError), results
    assert isinstance(results[5], Stop) and str(results[5]) == "stop here", results
    assert isinstance(results[7], SystemExit) and results[7].code == 4, results
    assert [r for i, r in enumerate(results) if i not in raising] == [0, 1, 2, 4, 6, 8, 9]
    assert counts(calls) == {i: 1 for i in range(10)}  # each ran once
    report = run.report
    assert report.task_errors == 3
    assert len(report.rungs) == 1 and not report.stepped_down, str(report)
    _no_step_down(warnings_log)


@pytest.mark.parametrize("name", sorted(LADDERS))
def test_a_base_exception_is_raised_unchanged_with_errors_raise(
    name: str, tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    for how, kind in KINDS.items():
        calls = counting_dir(tmp_path)
        items = [(calls, i, {6: how}) for i in range(8)]
        with pytest.raises(kind) as info:
            stepdown.map(ends, items, ladder=LADDERS[name], batch_size=1)
        assert type(info.value) is kind, how
        if kind is SystemExit:
            assert info.value.code == 4  # type: ignore[attr-defined]
        finished = stepdown.finished(info.value)
        assert set(range(6)) <= set(finished) and 6 not in finished, (how, finished)
        assert finished == {i: i for i in finished}
        ran = counts(calls)
        assert ran[6] == 1 and max(ran.values()) == 1, (how, ran)
    _no_step_down(warnings_log)


@pytest.mark.parametrize("name", sorted(LADDERS))
def test_keyboard_interrupt_raised_by_a_task_stops_the_run(
    name: str, tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    calls = counting_dir(tmp_path)
    items = [(calls, i, {6: "interrupt"}) for i in range(8)]
    with pytest.raises(KeyboardInterrupt) as info:
        stepdown.map(ends, items, ladder=LADDERS[name], batch_size=1)
    finished = stepdown.finished(info.value)
    assert set(range(6)) <= set(finished) and 6 not in finished, finished
    assert finished == {i: i for i in finished}
    ran = counts(calls)
    assert ran[6] == 1 and max(ran.values()) == 1, ran  # not run again on another rung
    _no_step_down(warnings_log)


# A BaseException class defined in the caller's script: cloudpickle ships it by value.
MAIN_STOP = """
import json, sys
import stepdown
from tests.support.tasks import counts, record

class Stop(BaseException):
    pass

def task(item):
    directory, index = item
    record(directory, index)
    if index % 8 == 3:
        raise Stop(f"stop at {index}")
    return index

directory, rung = sys.argv[1:]
run = stepdown.run(task, [(directory, i) for i in range(8)], ladder=[rung], errors="return")
try:
    stepdown.map(task, [(directory, i) for i in range(8, 16)], ladder=[rung], batch_size=1)
    raised = None
except Stop as exc:
    raised = exc
print(json.dumps({
    "slot": isinstance(run.results[3], Stop) and str(run.results[3]),
    "others": [r for i, r in enumerate(run.results) if i != 3],
    "rungs": [[r.label, r.failure] for r in run.report.rungs],
    "raised": type(raised) is Stop and str(raised),
    "counts": sorted(counts(directory).items()),
}))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rung", ["loky:2", "process:2"])
def test_a_base_exception_class_defined_in_main(rung: str, tmp_path: Path) -> None:
    calls = counting_dir(tmp_path)
    caller = start(MAIN_STOP, tmp_path, calls, rung)
    out, err = _communicate(caller, 40)
    assert caller.returncode == 0, err
    got = json.loads(out)
    assert got["slot"] == "stop at 3", got
    assert got["others"] == [0, 1, 2, 4, 5, 6, 7]
    assert len(got["rungs"]) == 1 and got["rungs"][0][1] is None, got["rungs"]
    assert got["raised"] == "stop at 11", got
    assert all(n == 1 for _, n in got["counts"]), got["counts"]
    assert "stepping down" not in err and "Traceback" not in err, err


EXITS_ON_7 = """
import sys

def score(x):
    if x == 7:
        sys.exit(3)
    return x * 10
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rung", ["thread:2", "sequential"])
def test_cli_records_sys_exit_of_a_task_as_its_error(rung: str, tmp_path: Path) -> None:
    (tmp_path / "exits.py").write_text(EXITS_ON_7)
    (tmp_path / "in.jsonl").write_text("".join(f"{i}\n" for i in range(20)))
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    job = ["-i", "in.jsonl", "-o", "out.jsonl"]
    out = subprocess.run(
        [sys.executable, "-m", "stepdown", "run", "exits:score", *job, "--ladder", rung],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=40,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert out.returncode == 1, out.stderr  # docs/cli.md: at least one item failed
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 20
    by_index = {line["index"]: line for line in lines}
    assert sorted(by_index) == list(range(20))
    error = by_index[7]["error"]
    assert (error["type"], error["message"]) == ("SystemExit", "3"), error
    assert all(by_index[i]["result"] == i * 10 for i in range(20) if i != 7)
    assert "Traceback" not in out.stderr and "stepping down" not in out.stderr, out.stderr


# Item 9: a user's Ctrl-C.

# After the Ctrl-C the caller lives on (until its stdin closes): its pool must be gone by then.
CTRL_C = """
import sys, time
import stepdown
from tests.support.signals import touch_and_sleep

directory, how, rung = sys.argv[1:]
items = [(directory, i, 0.5) for i in range(40)]
try:
    if how == "map":
        stepdown.map(touch_and_sleep, items, ladder=[rung], batch_size=1)
    else:
        with stepdown.Executor(2, ladder=[rung]) as ex:
            futures = [ex.submit(touch_and_sleep, item) for item in items]
            time.sleep(100)
except KeyboardInterrupt:
    print("caught KeyboardInterrupt", flush=True)
sys.stdin.read()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rung", ["process:2", "loky:2", "thread:2"])
@pytest.mark.parametrize("how", ["map", "executor"])
def test_ctrl_c_stops_the_run(
    how: str, rung: str, tmp_path: Path, strays: list[psutil.Process]
) -> None:
    calls = counting_dir(tmp_path)
    caller = start(CTRL_C, tmp_path, calls, how, rung)
    # Both workers in a task: started, past their initializer.
    assert wait_for_files(calls, 2), "the tasks did not start"
    family = _watch(caller.pid, strays)
    # loky's resource trackers serve the caller's whole life, not one pool.
    workers = [pid for pid in family if "resource_tracker" not in _command(pid)]
    os.killpg(caller.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert _read_line(caller, 20) == "caught KeyboardInterrupt\n"
    assert [pid for pid in workers if not gone_within(pid, 10)] == [], "the pool is still there"
    assert caller.poll() is None
    started = len(os.listdir(calls))
    _, err = _communicate(caller, 20)
    assert caller.returncode == 0, err
    assert "Traceback" not in err and "stepping down" not in err and "broke" not in err, err
    assert len(os.listdir(calls)) == started, "tasks started after the Ctrl-C was handled"
    assert started < 10, f"{started} of 40 tasks started"
    assert [pid for pid in family if not gone_within(pid, 10)] == []


# A SIGINT that reaches a loky worker while its interpreter starts, before any code of ours runs
# there: the worker sends it to itself from ``sitecustomize``, which its interpreter imports on
# start-up (the caller's is not a loky worker and goes on).
SIGINT_AT_START = """
import os, signal

with open("/proc/self/cmdline", "rb") as command:
    if b"popen_loky_posix" in command.read():
        os.kill(os.getpid(), signal.SIGINT)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="needs Linux's /proc")
def test_a_loky_worker_ignores_a_ctrl_c_while_it_starts(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(SIGINT_AT_START)
    script = "import stepdown\nprint(stepdown.map(abs, range(-3, 3), ladder=['loky:2']))\n"
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[3, 2, 1, 0, 1, 2]\n"
    assert "KeyboardInterrupt" not in done.stderr and "failed" not in done.stderr, done.stderr


def _read_line(caller: subprocess.Popen[str], seconds: float) -> str:
    assert caller.stdout is not None
    ready, _, _ = select.select([caller.stdout], [], [], seconds)
    if not ready:
        os.killpg(caller.pid, signal.SIGKILL)
        caller.communicate()
        raise AssertionError(f"the caller printed nothing in {seconds} s")
    return caller.stdout.readline()


# Item 10: workers die with their caller.

LONG_RUN = """
import sys
import stepdown
from tests.support.signals import nested, touch_and_sleep

directory, rung, how = sys.argv[1:]
if how == "nested":
    stepdown.map(nested, [(directory, i) for i in range(2)], ladder=[rung])
else:
    stepdown.map(touch_and_sleep, [(directory, i, 60.0) for i in range(4)], ladder=[rung])
"""


def _orphans_after(
    tmp_path: Path, rung: str, how: str, signum: int, strays: list[psutil.Process]
) -> None:
    calls = counting_dir(tmp_path)
    caller = start(LONG_RUN, tmp_path, calls, rung, how)
    running = 4 if how == "nested" else 2  # every worker, inner ones too, is in a task
    assert wait_for_files(calls, running), "the tasks did not start"
    family = _watch(caller.pid, strays)
    in_tasks = {int(name.split("-")[2]) for name in os.listdir(calls)}
    assert in_tasks <= set(family), (in_tasks, family)
    os.kill(caller.pid, signum)  # the caller alone, not its group
    _communicate(caller, 15)  # no worker holds its stdout or stderr any more
    left = [pid for pid in family if not gone_within(pid, 10)]
    assert left == [], [_command(pid) for pid in left]


def _command(pid: int) -> str:
    try:
        return f"{pid}: {' '.join(psutil.Process(pid).cmdline())}"
    except psutil.NoSuchProcess:
        return f"{pid}: gone since"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("rung", ["process:2", "loky:2"])
def test_workers_die_with_their_caller(
    rung: str, signum: int, tmp_path: Path, strays: list[psutil.Process]
) -> None:
    _orphans_after(tmp_path, rung, "flat", signum, strays)


@pytest.mark.timeout(60)
def test_nested_workers_die_with_the_outermost_caller(
    tmp_path: Path, strays: list[psutil.Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the host budget, which would rightly run the inner runs sequentially in the
    # outer workers (its slots are the outer run's): here the inner runs need pools to orphan.
    monkeypatch.setenv("STEPDOWN_BUDGET", "off")
    _orphans_after(tmp_path, "process:2", "nested", signal.SIGKILL, strays)
