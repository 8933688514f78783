"""The one translation boundary: every native failure class the table names, made for real from
the library that defines it, classifies to the reason the table gives it."""

from __future__ import annotations

import errno
import pickle
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest

from stepdown.backends import registry
from stepdown.backends.failures import classify, translate
from stepdown.errors import Reason, RemoteTraceback, ResourceFailure


def _loky(name: str) -> Callable[[], BaseException]:
    def make() -> BaseException:
        from loky import process_executor

        exc: BaseException = getattr(process_executor, name)(
            "A worker process managed by the executor was unexpectedly terminated.\n\n"
            "The exit codes of the workers are {SIGKILL(-9)}"
        )
        return exc

    return make


def _ray(name: str, *args: object) -> Callable[[], BaseException]:
    def make() -> BaseException:
        exceptions = pytest.importorskip("ray.exceptions", reason="ray is not installed")
        exc: BaseException = getattr(exceptions, name)(*args)
        return exc

    return make


# Every class name the registry's failure rows name, and how to make a real one.
MAKERS: dict[str, Callable[[], BaseException]] = {
    "BrokenProcessPool": lambda: BrokenProcessPool(
        "A process in the process pool was terminated abruptly while the future was running or "
        "pending."
    ),
    "TerminatedWorkerError": _loky("TerminatedWorkerError"),
    "ShutdownExecutorError": _loky("ShutdownExecutorError"),
    "OutOfMemoryError": _ray("OutOfMemoryError", "Task was killed due to the node running low"),
    "ObjectStoreFullError": _ray("ObjectStoreFullError", "the object store is full"),
    "WorkerCrashedError": _ray("WorkerCrashedError"),
    "RayActorError": _ray("RayActorError"),
    "NodeDiedError": _ray("NodeDiedError", "node 1 died"),
    "LocalRayletDiedError": _ray("LocalRayletDiedError"),
    "GetTimeoutError": _ray("GetTimeoutError", "Get timed out"),
}

ROWS = [
    (backend.name, name, row.reason)
    for backend in registry.infos()
    for row in backend.failures
    for name in sorted(row.names)
]


def test_every_name_in_the_table_has_a_real_exception_here() -> None:
    assert {name for _, name, _ in ROWS} == set(MAKERS)


@pytest.mark.parametrize(("backend", "name", "reason"), ROWS, ids=[r[1] for r in ROWS])
def test_each_backends_failure_classifies_as_its_row_says(
    backend: str, name: str, reason: Reason
) -> None:
    exc = MAKERS[name]()
    assert name in {cls.__name__ for cls in type(exc).__mro__}
    assert classify(exc) is reason
    failure = translate(exc, f"{backend}(2)")
    assert (failure.reason, failure.rung, failure.__cause__) == (reason, f"{backend}(2)", exc)


GENERAL = [
    (MemoryError(), Reason.OUT_OF_MEMORY),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), Reason.OUT_OF_MEMORY),
    (BlockingIOError(errno.EAGAIN, "Resource unavailable"), Reason.CANNOT_START_PROCESS),
    (RuntimeError("can't start new thread"), Reason.CANNOT_START_THREAD),
    (RuntimeError("cannot join thread before it is started"), Reason.CANNOT_START_THREAD),
    (OSError(errno.EMFILE, "Too many open files"), Reason.CANNOT_START_PROCESS),
    (OSError(errno.ENOSPC, "No space left on device"), Reason.CANNOT_START_PROCESS),
    (BrokenExecutor("broken"), Reason.EXECUTOR_BROKEN),
    (BrokenProcessPool("The executor manager thread crashed"), Reason.EXECUTOR_BROKEN),
]


@pytest.mark.parametrize(("exc", "reason"), GENERAL, ids=[type(e).__name__ for e, _ in GENERAL])
def test_failures_of_the_machine(exc: BaseException, reason: Reason) -> None:
    assert classify(exc) is reason


def test_the_root_cause_decides() -> None:
    crashed = BrokenProcessPool("The executor manager thread crashed")
    crashed.__cause__ = RuntimeError("can't start new thread")
    assert classify(crashed) is Reason.CANNOT_START_THREAD


def test_an_unknown_exception_is_the_executor_breaking() -> None:
    assert classify(pickle.PicklingError("cannot pickle")) is None
    failure = translate(pickle.PicklingError("cannot pickle"), "process(2)")
    assert failure.reason is Reason.EXECUTOR_BROKEN
    assert failure.detail == "PicklingError: cannot pickle"


def test_a_dead_workers_exit_code_is_named() -> None:
    failure = translate(MAKERS["TerminatedWorkerError"](), "loky(2)")
    assert failure.detail == "worker killed by SIGKILL (likely the out-of-memory killer)"
    failure = translate(MAKERS["BrokenProcessPool"](), "process(2)", exitcode=-15)
    assert failure.detail == "worker killed by SIGTERM"


def test_a_resource_failure_passes_through_and_gets_its_rung() -> None:
    mine = ResourceFailure(Reason.EXECUTOR_STALLED, "no progress")
    assert translate(mine, "thread(2)") is mine and mine.rung == "thread(2)"


def test_a_wrapper_is_unwrapped_to_what_failed_in_the_worker() -> None:
    exceptions = pytest.importorskip("ray.exceptions", reason="ray is not installed")
    inner = ModuleNotFoundError("No module named 'scoring'")
    wrapped = exceptions.RayTaskError("run_batch", "Traceback (most recent call last): ...", inner)
    failure = translate(wrapped, "ray(2)")
    assert failure.__cause__ is inner
    assert isinstance(inner.__cause__, RemoteTraceback)
    assert failure.reason is Reason.EXECUTOR_BROKEN
    assert failure.detail == "ModuleNotFoundError: No module named 'scoring'"


def test_a_long_native_message_is_cut_to_its_first_line() -> None:
    exceptions = pytest.importorskip("ray.exceptions", reason="ray is not installed")
    report = "Task was killed due to the node running low on memory.\n" + "top users...\n" * 50
    failure = translate(exceptions.OutOfMemoryError(report), "ray(2)")
    assert failure.detail == f"OutOfMemoryError: {report.splitlines()[0]}"
