"""Faults produced for real, without cgroups: a worker SIGKILLed mid-run, a task that kills its
own process every time, a task that raises a real MemoryError."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest

import stepdown
from stepdown.errors import Reason

from tests.support.tasks import counts, huge_for_5, poison_13, recorded

pytestmark = pytest.mark.timeout(90)

KILLABLE = {
    "loky": ["loky:2", "thread:2"],
    "process": [{"backend": "process", "workers": 2, "start_method": "fork"}, "thread:2"],
}
# The same, without the one fresh pool a process rung gets after a worker died.
NO_RESTART = {
    "loky": [{"backend": "loky", "workers": 2, "restarts": 0}, "thread:2"],
    "process": [
        {"backend": "process", "workers": 2, "start_method": "fork", "restarts": 0},
        "thread:2",
    ],
}


@pytest.mark.parametrize("restart", [True, False], ids=["restart", "no-restart"])
@pytest.mark.parametrize("name", sorted(KILLABLE))
def test_worker_sigkilled_mid_run(
    name: str, restart: bool, tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    directory = str(tmp_path)
    ladder = KILLABLE[name] if restart else NO_RESTART[name]
    started = time.monotonic()
    results = stepdown.imap(
        recorded, [(directory, i) for i in range(40)], ladder=ladder, ordered=False
    )
    delivered: list[int] = []
    delivered_before_kill: set[int] = set()
    for value in results:
        delivered.append(math.isqrt(value))
        if len(delivered) == 10:
            delivered_before_kill = set(delivered)
            names = [n for n in os.listdir(directory) if n.startswith("start-")]
            workers = {int(n.split("-")[2]) for n in names} - {os.getpid()}
            os.kill(min(workers), signal.SIGKILL)
    assert time.monotonic() - started < 30

    report = results.report
    assert sorted(delivered) == list(range(40))
    starts = counts(directory)
    assert set(starts) == set(range(40))
    # No result delivered before the kill was computed again.
    assert all(starts[i] == 1 for i in delivered_before_kill)
    # What ran twice had been in flight, and the report counts it.
    twice = sum(n - 1 for n in starts.values())
    assert twice <= report.rerun
    first = report.rungs[0]
    assert first.failure is not None and first.reason == Reason.WORKER_DIED.value
    assert "killed by SIGKILL" in str(report)
    then = "restarting it with a fresh pool" if restart else "stepping down to thread(2)"
    assert any(
        f"{first.label} failed: a worker process died" in r.message
        and then in r.message
        and "results in hand" in r.message
        for r in warnings_log.records
    ), [r.message for r in warnings_log.records]
    second = report.rungs[1]
    # A loky pool may come back fork-started, when no other thread of this process runs at
    # that moment (tests/test_replacement.py has both cases).
    again = {first.label, first.label.replace("loky", "process")}
    assert second.label in (again if restart else {"isolation(1)"})
    assert report.final_rung in (again if restart else {"thread(2)"})


@pytest.mark.parametrize("name", sorted(KILLABLE))
def test_poison_task_is_isolated_not_run_in_caller(
    name: str, warnings_log: pytest.LogCaptureFixture
) -> None:
    run = stepdown.run(poison_13, range(30), ladder=KILLABLE[name], errors="return")
    # We are still alive: the poison never ran in this process.
    crashed = run.results[13]
    assert isinstance(crashed, stepdown.TaskCrashed)
    assert crashed.index == 13 and crashed.exitcode == -signal.SIGKILL
    assert [r for i, r in enumerate(run.results) if i != 13] == [i for i in range(30) if i != 13]
    assert run.report.crashed == [13]
    assert run.report.isolated >= 1
    assert any("task 13 killed its worker process again" in r.message for r in warnings_log.records)


def test_poison_task_raises_task_crashed() -> None:
    with pytest.raises(stepdown.TaskCrashed, match="task 13 .*SIGKILL"):
        stepdown.run(poison_13, range(20), ladder=["loky:2"])


@pytest.mark.parametrize("name", sorted(KILLABLE))
def test_memory_error_in_a_task_shrinks_the_rung_then_is_its_outcome(
    name: str, warnings_log: pytest.LogCaptureFixture
) -> None:
    """A task that cannot have the memory it asks for (a petabyte) shrinks the process rung;
    with one worker, which had all the memory there is, its MemoryError is its outcome: it
    would not fit beside the caller either, so it never moves there."""
    run = stepdown.run(huge_for_5, range(20), ladder=KILLABLE[name], errors="return")
    assert isinstance(run.results[5], MemoryError)
    assert [r for i, r in enumerate(run.results) if i != 5] == [i for i in range(20) if i != 5]
    reasons = [r.reason for r in run.report.rungs]
    assert reasons[0] == Reason.OUT_OF_MEMORY.value
    first = run.report.rungs[0].label
    assert run.report.final_rung == first.replace("(2)", "(1)")
    assert any(
        "out of memory" in r.message and "shrinking it" in r.message for r in warnings_log.records
    )


def test_memory_error_as_task_error_when_asked() -> None:
    with pytest.raises(MemoryError):
        stepdown.run(huge_for_5, range(20), ladder=["loky:2"], memory_error="raise")
