"""Per-task timeouts, for real: a task that hangs, on every local rung.

On a process rung the worker running the overdue task is killed (its pid is gone afterwards)
and the pool renewed; in-process the task is abandoned, still running. Either way the task's
slot gets ``TaskTimeout``, the others of its batch run again, nothing is lost, the rung does
not step down, and the wall time is bounded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepdown
from stepdown.backends import registry
from stepdown.runner.timeouts import Timeouts

from tests.conftest import BACKEND_LADDERS
from tests.support import tasks
from tests.support.processes import gone_within
from tests.support.tasks import counting_dir, hangs_on_3, pid, sleeps_or_hangs, square

pytestmark = pytest.mark.timeout(90)

# Every local backend but the toy one (it proves the registry, not timeouts).
LADDERS = {name: ladder for name, ladder in BACKEND_LADDERS.items() if name != "toy"}


@pytest.fixture(autouse=True)
def _release_hung_threads() -> Iterator[None]:
    tasks.RELEASE.clear()
    yield
    tasks.RELEASE.set()  # in-process tasks that were abandoned return now


def _pids_of(directory: str, index: int) -> list[int]:
    return [int(n.split("-")[2]) for n in os.listdir(directory) if n.startswith(f"start-{index}-")]


@pytest.mark.parametrize("name", sorted(LADDERS))
def test_a_hung_task_times_out_and_the_rest_is_delivered(name: str, tmp_path: Path) -> None:
    ladder = LADDERS[name]
    calls = counting_dir(tmp_path)
    began = time.monotonic()
    # Batches of 4: the hung task shares its batch with others, which must run again.
    run = stepdown.run(
        hangs_on_3,
        [(calls, i) for i in range(10)],
        ladder=ladder,
        task_timeout=1.0,
        errors="return",
        batch_size=4,
    )
    wall = time.monotonic() - began
    assert wall < 20, wall
    timed_out = run.results[3]
    assert isinstance(timed_out, stepdown.TaskTimeout) and isinstance(timed_out, TimeoutError)
    assert (timed_out.index, timed_out.seconds) == (3, 1.0)
    assert [r for i, r in enumerate(run.results) if i != 3] == [i for i in range(10) if i != 3]
    report = run.report
    assert report.timeouts == 1 and report.task_errors == 0
    assert not report.stepped_down, str(report)
    assert report.rungs[-1].renewed >= 1
    assert "1 ran over task_timeout" in str(report)
    (hung,) = _pids_of(calls, 3)
    rung = registry.info(str(report.rungs[-1].backend))
    if rung.in_process:
        assert hung == os.getpid()  # abandoned: still waiting, in this process
        assert not tasks.RELEASE.is_set()
    else:
        assert gone_within(hung, 10), "the worker that ran the hung task is still alive"


@pytest.mark.parametrize("name", ["thread", "loky"])
def test_a_timeout_raises_with_errors_raise(name: str, tmp_path: Path) -> None:
    calls = counting_dir(tmp_path)
    began = time.monotonic()
    with pytest.raises(stepdown.TaskTimeout) as info:
        stepdown.map(
            hangs_on_3, [(calls, i) for i in range(6)], ladder=LADDERS[name], task_timeout=0.5
        )
    assert time.monotonic() - began < 20
    assert info.value.index == 3
    # Raised as soon as it timed out: whatever had finished by then is kept, and correct.
    finished = stepdown.finished(info.value)
    assert finished == {i: i for i in finished} and 3 not in finished


def test_a_timeout_not_hit_changes_nothing() -> None:
    run = stepdown.run(square, range(200), ladder=["loky:2"], task_timeout=30)
    assert run.results == [x * x for x in range(200)]
    assert run.report.timeouts == 0 and run.report.rungs[-1].renewed == 0


def open_fds(_: object) -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_warm_worker_keeps_one_watch_file_open_across_runs() -> None:
    """Each run has its own watch directory; a warm worker serving run after run must not keep
    a file of every one open (it would run out of descriptors)."""
    ladder = [{"backend": "process", "workers": 1, "start_method": "fork"}]
    first = stepdown.map(open_fds, range(2), ladder=ladder, task_timeout=30)
    for _ in range(15):
        last = stepdown.map(open_fds, range(2), ladder=ladder, task_timeout=30)
    assert max(last) <= max(first) + 1, (first, last)


def test_the_watch_directory_is_removed(tmp_path: Path) -> None:
    before = {p for p in os.listdir(_tmp()) if p.startswith("stepdown-watch-")}
    stepdown.map(pid, range(20), ladder=["process:2"], task_timeout=10)
    after = {p for p in os.listdir(_tmp()) if p.startswith("stepdown-watch-")}
    assert after <= before


def _tmp() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_a_watch_file_caught_half_written_is_skipped() -> None:
    """A worker creates its file before it first writes it: the runner may read it empty."""
    watch = Timeouts(1.0)
    directory = watch.watch(in_process=False)
    assert isinstance(directory, str)
    try:
        Path(directory, "12345").write_bytes(b"")
        Path(directory, "12346").write_bytes(b"\x01\x02")
        assert watch.overdue({1, 2}) == []
    finally:
        watch.close()
    assert not os.path.exists(directory)


@pytest.mark.parametrize("bad", [0, -1, "1", float("inf"), True])
def test_task_timeout_is_checked(bad: object) -> None:
    with pytest.raises(stepdown.UsageError, match="task_timeout"):
        stepdown.map(square, [1], task_timeout=bad)  # type: ignore[arg-type]


def test_a_task_left_running_by_a_renewal_is_still_held_to_the_timeout() -> None:
    """Thread B hangs on item 1 first; thread A hangs on item 2 half a second later. When item
    1 is abandoned the thread pool is renewed, and item 2 runs on in the old pool: it must
    still time out, or the run waits for it forever."""
    items = [(0.5, 0), (None, 1), (None, 2), (0.0, 3), (0.0, 4), (0.0, 5)]
    began = time.monotonic()
    run = stepdown.run(
        sleeps_or_hangs, items, ladder=["thread:2"], task_timeout=1.0, errors="return", batch_size=1
    )
    assert time.monotonic() - began < 20
    assert [type(r).__name__ for r in run.results[1:3]] == ["TaskTimeout", "TaskTimeout"]
    assert [run.results[i] for i in (0, 3, 4, 5)] == [0, 3, 4, 5]
    assert run.report.timeouts == 2
