"""``stepdown.Executor`` as a drop-in ``ProcessPoolExecutor``: CPython's executor tests
(``Lib/test/test_concurrent_futures``: submit, map, shutdown, initializer, max_tasks_per_child,
as_completed, wait), adapted and run on every local rung.

Task functions are top-level here, so workers import them by reference; the initializer's state
is a module global, read back by a task, so it is the worker's state that is checked.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import multiprocessing
import os
import sys
import threading
import time
import uuid
from concurrent import futures
from typing import Any

import pytest

import stepdown
from stepdown.backends import registry

from tests.conftest import BACKEND_LADDERS
from tests.support.tasks import TaskBug, fails_on_7, square

pytestmark = pytest.mark.timeout(60)

# Every local rung, as a one-rung ladder (no toy backend: this is the public drop-in).
LADDERS = {name: ladder for name, ladder in BACKEND_LADDERS.items() if name != "toy"}

INIT_STATUS = "uninitialized"
INIT_CALLS = 0
MARK = "unset"


class InitBroken(Exception):
    """The failing initializer's own exception."""


def init(status: str) -> None:
    global INIT_STATUS, INIT_CALLS
    INIT_STATUS = status
    INIT_CALLS += 1


def init_state(_: object = None) -> tuple[str, int, int]:
    time.sleep(0.02)
    return INIT_STATUS, INIT_CALLS, os.getpid()


def init_fail(message: str) -> None:
    raise InitBroken(message)


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def sleep_return(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def worker_id(_: object = None, pause: float = 0.02) -> str:
    """Which worker ran this: process and thread; long enough that two workers both get work."""
    time.sleep(pause)
    return f"{os.getpid()}:{threading.get_ident()}"


def read_mark() -> str:
    return MARK


@pytest.fixture(params=list(LADDERS))
def ladder(request: pytest.FixtureRequest) -> list[Any]:
    """Each local rung in turn (overrides conftest's, which adds the toy backend)."""
    return LADDERS[request.param]


@pytest.fixture
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The initializer's globals as a fresh import has them (forked workers inherit these)."""
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "INIT_STATUS", "uninitialized")
    monkeypatch.setattr(module, "INIT_CALLS", 0)


def backend_of(ladder: list[Any]) -> str:
    first = ladder[0]
    return first["backend"] if isinstance(first, dict) else str(first).split(":")[0]


def in_process(ladder: list[Any]) -> bool:
    return registry.info(backend_of(ladder)).in_process


def only_first_rung_ran(report: stepdown.Report, ladder: list[Any]) -> bool:
    started = {r.backend for r in report.rungs if r.started}
    return started <= {backend_of(ladder)}


def warm_up(ladder: list[Any]) -> None:
    """Run a plain executor first, so a warm pool is kept that a later executor could reuse."""
    with stepdown.Executor(ladder=ladder) as ex:
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]


def test_submit_result_and_exception_unchanged(ladder: list[Any]) -> None:
    with stepdown.Executor(ladder=ladder) as ex:
        good = ex.submit(pow, 2, 8)
        bad = ex.submit(fails_on_7, 7)
        plain = ex.submit(capture, 1, 2, a=3)
        named = ex.submit(capture, 1, self=2, fn=3)  # fn is positional-only, as in the stdlib
        assert isinstance(good, futures.Future)
        assert good.result(timeout=30) == 256
        assert plain.result(timeout=30) == ((1, 2), {"a": 3})
        assert named.result(timeout=30) == ((1,), {"self": 2, "fn": 3})
        error = bad.exception(timeout=30)
    assert type(error) is TaskBug
    assert error.code == 7 and error.args == ("seven is bad", 7)
    if not in_process(ladder):
        assert "fails_on_7" in str(error.__cause__)


# --- map ----------------------------------------------------------------------------------------


def test_map_one_and_several_iterables(ladder: list[Any]) -> None:
    with stepdown.Executor(ladder=ladder) as ex:
        assert list(ex.map(square, range(10))) == [x * x for x in range(10)]
        assert list(ex.map(square, (x for x in range(5)))) == [0, 1, 4, 9, 16]
        assert list(ex.map(pow, [2, 3, 4], [1, 2, 3, 4, 5])) == [2, 9, 64]
        # Stops at the shortest, like builtin map: an endless iterable is fine.
        assert list(ex.map(pow, range(5), itertools.count())) == [1, 1, 4, 27, 256]


def test_map_chunksize_keeps_results(ladder: list[Any]) -> None:
    with stepdown.Executor(ladder=ladder) as ex:
        for chunksize in (1, 3, 500, None):
            got = list(ex.map(square, range(50), chunksize=chunksize))
            assert got == [x * x for x in range(50)], f"chunksize={chunksize}"


def test_map_chunk_runs_in_one_worker(ladder: list[Any]) -> None:
    # A chunk is what one worker gets, as in ProcessPoolExecutor and multiprocessing.Pool.
    with stepdown.Executor(ladder=ladder) as ex:
        ids = list(ex.map(worker_id, range(12), chunksize=3))
        chunks = [set(ids[i : i + 3]) for i in range(0, 12, 3)]
        assert all(len(chunk) == 1 for chunk in chunks), ids
        assert len(set(ex.map(worker_id, range(12), chunksize=500))) == 1


def test_map_exception_at_its_turn(ladder: list[Any]) -> None:
    got: list[int] = []
    with stepdown.Executor(ladder=ladder) as ex, pytest.raises(TaskBug) as info:
        for value in ex.map(fails_on_7, range(10), chunksize=1):
            got.append(value)
    assert got == list(range(7))
    assert info.value.code == 7


def test_map_timeout(ladder: list[Any]) -> None:
    got: list[object] = []
    with stepdown.Executor(ladder=ladder) as ex:
        # Every worker up and warm (forkserver starts them on demand): time only the map.
        assert list(ex.map(sleep_return, [0.2, 0.2], [1, 2])) == [1, 2]
        start = time.monotonic()
        with pytest.raises(futures.TimeoutError):
            for value in ex.map(sleep_return, [0, 0, 3.0], ["a", "b", "c"], timeout=1.0):
                got.append(value)
        elapsed = time.monotonic() - start
    assert got == ["a", "b"]
    # Raised by the timeout, not after the slow call returned (a bound against a hang, not a
    # speed: the slow call takes 3 s, the timeout is 1 s).
    assert elapsed < 2.5, elapsed


def test_map_empty_and_bad_chunksize(ladder: list[Any]) -> None:
    with stepdown.Executor(ladder=ladder) as ex:
        assert list(ex.map(square, [])) == []
        assert list(ex.map(pow, [], [1, 2])) == []
        with pytest.raises(ValueError, match="chunksize"):
            list(ex.map(square, range(5), chunksize=0))
        assert ex.submit(square, 3).result(timeout=30) == 9  # still usable


# --- shutdown -----------------------------------------------------------------------------------


def test_shutdown_wait_completes_submitted(ladder: list[Any]) -> None:
    ex = stepdown.Executor(ladder=ladder)
    fs = [ex.submit(sleep_return, 0.02, i) for i in range(10)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert [f.result(timeout=0) for f in fs] == list(range(10))


def test_shutdown_no_wait_still_finishes(ladder: list[Any]) -> None:
    ex = stepdown.Executor(ladder=ladder)
    fs = [ex.submit(sleep_return, 1.0, i) for i in range(4)]
    ex.shutdown(wait=False)
    # It returned without waiting: calls are still running or queued (they take 2 s at least).
    assert not all(f.done() for f in fs)
    assert [f.result(timeout=30) for f in fs] == list(range(4))


def test_shutdown_cancel_futures(ladder: list[Any]) -> None:
    ex = stepdown.Executor(ladder=ladder)
    fs = [ex.submit(sleep_return, 0.05, i) for i in range(50)]
    deadline = time.monotonic() + 20
    while not (fs[0].running() or fs[0].done()) and time.monotonic() < deadline:
        time.sleep(0.005)
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    others = [(i, f) for i, f in enumerate(fs) if not f.cancelled()]
    assert len(cancelled) > 20, f"only {len(cancelled)} of 50 cancelled"
    assert others, "the first call was running: it cannot be cancelled"
    for i, f in others:  # none lost: each one not cancelled finished with its result
        assert f.done(), f"future {i} neither cancelled nor done"
        assert f.result(timeout=0) == i


def test_submit_after_shutdown_and_context_manager(ladder: list[Any]) -> None:
    with stepdown.Executor(ladder=ladder) as ex:
        assert isinstance(ex, stepdown.Executor)
        f = ex.submit(sleep_return, 0.05, "done")
    assert f.done() and f.result(timeout=0) == "done"
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    ex.shutdown()  # a second shutdown is harmless


# --- futures from the outside: as_completed, wait, asyncio --------------------------------------


def test_as_completed(ladder: list[Any]) -> None:
    with stepdown.Executor(ladder=ladder) as ex:
        slow = ex.submit(sleep_return, 0.5, "slow")
        with pytest.raises(futures.TimeoutError):
            list(futures.as_completed([slow], timeout=0.05))
        fs = [slow, ex.submit(square, 3), ex.submit(fails_on_7, 7)]
        seen = list(futures.as_completed(fs, timeout=30))
    assert len(seen) == 3 and set(seen) == set(fs)
    assert fs[1].result(timeout=0) == 9 and slow.result(timeout=0) == "slow"
    assert isinstance(fs[2].exception(timeout=0), TaskBug)


def test_wait_first_and_all_completed(ladder: list[Any]) -> None:
    with stepdown.Executor(ladder=ladder) as ex:
        fast = ex.submit(square, 6)
        slow = ex.submit(sleep_return, 0.5, "slow")
        done, pending = futures.wait([fast, slow], timeout=30, return_when=futures.FIRST_COMPLETED)
        assert (done, pending) == ({fast}, {slow})
        done, pending = futures.wait([fast, slow], timeout=30, return_when=futures.ALL_COMPLETED)
        assert (done, pending) == ({fast, slow}, set())
        assert (fast.result(), slow.result()) == (36, "slow")


def test_asyncio_wrap_future(ladder: list[Any]) -> None:
    async def use(ex: stepdown.Executor) -> tuple[object, ...]:
        wrapped = await asyncio.wrap_future(ex.submit(square, 7))
        via_loop = await asyncio.get_running_loop().run_in_executor(ex, square, 8)
        with pytest.raises(TaskBug):
            await asyncio.wrap_future(ex.submit(fails_on_7, 7))
        return wrapped, via_loop

    with stepdown.Executor(ladder=ladder) as ex:
        assert asyncio.run(use(ex)) == (49, 64)


# --- the stdlib constructor: max_workers, mp_context --------------------------------------------


def test_max_workers_positional_and_keyword() -> None:
    with stepdown.Executor(2) as ex:
        assert list(ex.map(square, range(6))) == [0, 1, 4, 9, 16, 25]
    with stepdown.Executor(max_workers=4) as ex:
        assert ex.submit(pow, 3, 3).result(timeout=30) == 27


def test_max_workers_caps_the_rung(ladder: list[Any]) -> None:
    with stepdown.Executor(1, ladder=ladder) as ex:
        ids = [f.result(timeout=30) for f in [ex.submit(worker_id, i, 0.05) for i in range(6)]]
    assert len(set(ids)) == 1, ids


def test_mp_context_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    # A forked worker would inherit this value; a spawned one imports the module afresh.
    monkeypatch.setattr(sys.modules[__name__], "MARK", "set in the caller")
    for context in (multiprocessing.get_context("spawn"), "spawn"):
        with stepdown.Executor(2, context, ladder=["process:2"]) as ex:
            assert ex.submit(read_mark).result(timeout=60) == "unset", context
            assert not ex.report.stepped_down, str(ex.report)


# --- initializer --------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_state")
def test_initializer_sets_worker_state(ladder: list[Any]) -> None:
    warm_up(ladder)  # a warm pool made without the initializer must not be reused for this one
    token = f"ready-{uuid.uuid4().hex[:8]}"
    with stepdown.Executor(ladder=ladder, initializer=init, initargs=(token,)) as ex:
        seen = [f.result(timeout=30) for f in [ex.submit(init_state) for _ in range(8)]]
    assert {status for status, _, _ in seen} == {token}
    calls = [count for _, count, _ in seen]
    if in_process(ladder):
        per_thread = 1 if backend_of(ladder) == "sequential" else 2  # once per thread
        assert all(1 <= count <= per_thread for count in calls), calls
        assert init_state()[0] == token  # it ran in the caller
    else:
        assert calls == [1] * 8, "once in each worker process"
        assert os.getpid() not in {pid for _, _, pid in seen}
        assert init_state()[0] == "uninitialized", "the initializer ran in the caller"


def test_failing_initializer(ladder: list[Any]) -> None:
    start = time.monotonic()
    ex = stepdown.Executor(ladder=ladder, initializer=init_fail, initargs=("no database",))
    try:
        fs = [ex.submit(square, i) for i in range(4)]
        errors = [f.exception(timeout=30) for f in fs]
        try:
            later = ex.submit(square, 5)
        except stepdown.InitializerFailed as exc:
            errors.append(exc)
        else:
            errors.append(later.exception(timeout=30))
        elapsed = time.monotonic() - start
        report = ex.report
    finally:
        ex.shutdown(wait=True)
    for error in errors:
        assert isinstance(error, stepdown.InitializerFailed), repr(error)
        assert isinstance(error, futures.BrokenExecutor)
        assert isinstance(error, stepdown.StepdownError)
        assert type(error.__cause__) is InitBroken, repr(error.__cause__)
        assert error.__cause__.args == ("no database",)
    assert elapsed < 15, elapsed
    assert only_first_rung_ran(report, ladder), str(report)


# --- max_tasks_per_child, report ----------------------------------------------------------------


def test_max_tasks_per_child(ladder: list[Any]) -> None:
    warm_up(ladder)  # a warm pool made without the limit must not be reused for this one
    with stepdown.Executor(ladder=ladder, max_tasks_per_child=2) as ex:
        pids = [f.result(timeout=30) for f in [ex.submit(os.getpid) for _ in range(10)]]
        report = ex.report
    if in_process(ladder):  # ignored there, and still runs
        assert pids == [os.getpid()] * 10
    else:
        per_pid = collections.Counter(pids)
        assert max(per_pid.values()) <= 2, per_pid
        assert os.getpid() not in per_pid
    assert only_first_rung_ran(report, ladder), str(report)


def test_report_counts_tasks_before_shutdown(ladder: list[Any]) -> None:
    with stepdown.Executor(ladder=ladder) as ex:
        fs = [ex.submit(square, i) for i in range(10)]
        assert [f.result(timeout=30) for f in fs] == [i * i for i in range(10)]
        assert ex.report.tasks == 10, str(ex.report)
        assert ex.report.wall > 0
        assert not ex.report.stepped_down, str(ex.report)


# --- bad arguments ------------------------------------------------------------------------------


BAD_ARGUMENTS = [
    *[("max_workers", value) for value in (0, -1, "2", 2.5)],
    *[("task_timeout", value) for value in (0, -1, "x")],
    ("initializer", 5),
    ("initargs", 5),
    *[("max_tasks_per_child", value) for value in (0, -1)],
]


@pytest.mark.parametrize(("option", "value"), BAD_ARGUMENTS)
def test_bad_arguments_raise_usage_error(option: str, value: object) -> None:
    kwargs: dict[str, Any] = {option: value}
    if option == "initargs":
        kwargs["initializer"] = init
    with pytest.raises(stepdown.UsageError) as info:
        stepdown.Executor(**kwargs).shutdown()
    message = str(info.value)
    assert option in message and repr(value) in message, message


def test_map_never_pickles_for_an_in_process_rung() -> None:
    """A function that cannot be pickled (it holds a lock) maps fine on threads: only a process
    pool pickles, and only when it sends the first chunk."""
    lock = threading.Lock()
    with stepdown.Executor(2, ladder=["thread:2"]) as ex:
        assert list(ex.map(lambda x: (lock, x)[1], range(5), chunksize=2)) == list(range(5))
