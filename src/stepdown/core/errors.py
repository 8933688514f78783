"""The whole exception tree of stepdown, and the table that sorts native failures into it.

::

    Exception
    └── StepdownError
        ├── ResourceFailure            (also a concurrent.futures.BrokenExecutor)
        │   │   the executor could not run tasks; the run steps down to the next rung
        │   └── BackendUnavailable     the rung could not be used at all (missing extra, ...)
        ├── TaskCrashed                a task killed its worker process twice
        └── UsageError                 (also a ValueError) bad arguments
            └── PolicyError            a bad policy: names the file and the key

A task's own exception is never wrapped: it reaches the caller with its own type, with the
worker's traceback attached as ``__cause__`` (a :class:`RemoteTraceback`).

:func:`classify` is the boundary: it maps what an executor raised (``OSError`` ENOMEM at fork,
``RuntimeError: can't start new thread``, ``BrokenProcessPool``, loky's ``TerminatedWorkerError``,
...) to a :class:`Reason`, most specific match first. It never imports loky: loky's classes are
recognised by name, so classifying costs nothing when loky was never used.
"""

from __future__ import annotations

import enum
import errno
import re
import signal
from collections.abc import Callable
from concurrent.futures import BrokenExecutor

__all__ = [
    "BackendUnavailable",
    "PolicyError",
    "Reason",
    "RemoteTraceback",
    "ResourceFailure",
    "StepdownError",
    "TaskCrashed",
    "UsageError",
    "classify",
    "describe_exitcode",
]


class Reason(enum.Enum):
    """Why an executor could not run tasks."""

    OUT_OF_MEMORY = "out of memory"
    CANNOT_START_THREAD = "cannot start a thread"
    CANNOT_START_PROCESS = "cannot start a process"
    WORKER_DIED = "a worker process died"
    EXECUTOR_STALLED = "the executor stalled"
    EXECUTOR_BROKEN = "the executor broke"
    BACKEND_UNAVAILABLE = "backend unavailable"


class StepdownError(Exception):
    """Base class of every error stepdown raises itself."""


class ResourceFailure(StepdownError, BrokenExecutor):
    """An executor could not run tasks: a reason to step down, never the task's fault.

    ``reason`` is a :class:`Reason`; ``rung`` names the rung (``"loky(3)"``) when known;
    ``detail`` is the native message. The native exception is ``__cause__``.
    """

    def __init__(self, reason: Reason, detail: str = "", rung: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.rung = rung
        where = f"{rung}: " if rung else ""
        tail = f": {detail}" if detail else ""
        super().__init__(f"{where}{reason.value}{tail}")


class BackendUnavailable(ResourceFailure):
    """A rung cannot be used here at all: its dependency is missing, its cluster unreachable."""

    def __init__(self, detail: str, rung: str | None = None) -> None:
        super().__init__(Reason.BACKEND_UNAVAILABLE, detail, rung)


class TaskCrashed(StepdownError):
    """A task killed the worker process that ran it, and did so again when run alone.

    Such a task is never run in the caller's process. ``index`` is the task's position in the
    input, ``exitcode`` the worker's exit code (negative: killed by that signal).
    """

    def __init__(self, index: int, exitcode: int | None) -> None:
        self.index = index
        self.exitcode = exitcode
        super().__init__(
            f"task {index} killed its worker process twice ({describe_exitcode(exitcode)}); "
            "it was isolated and not run in the caller"
        )

    def __reduce__(self) -> tuple[type[TaskCrashed], tuple[int, int | None]]:
        return (type(self), (self.index, self.exitcode))


class UsageError(StepdownError, ValueError):
    """A bad argument: an unknown backend, a negative worker count, an unknown option."""


class PolicyError(UsageError):
    """A bad policy. The message names the source (file or ``<dict>``) and the key path."""

    def __init__(self, message: str, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        where = ", ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; attached as ``__cause__`` of a task's exception."""

    def __init__(self, tb: str) -> None:
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def describe_exitcode(exitcode: int | None) -> str:
    """``-9`` → ``"killed by SIGKILL"``, ``3`` → ``"exit code 3"``."""
    if exitcode is None:
        return "exit code unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _message(exc: BaseException) -> str:
    return str(exc).lower()


# The classification table: (test, reason), most specific first. A BrokenProcessPool whose
# cause is classified takes the cause's reason (loky's "manager thread crashed" with a
# `can't start new thread` cause is a thread problem, not a dead worker).
_TABLE: list[tuple[Callable[[BaseException], bool], Reason]] = [
    (lambda e: isinstance(e, MemoryError), Reason.OUT_OF_MEMORY),
    (lambda e: isinstance(e, OSError) and e.errno == errno.ENOMEM, Reason.OUT_OF_MEMORY),
    (lambda e: isinstance(e, OSError) and e.errno == errno.EAGAIN, Reason.CANNOT_START_PROCESS),
    (
        lambda e: isinstance(e, RuntimeError) and "can't start new thread" in _message(e),
        Reason.CANNOT_START_THREAD,
    ),
    (
        lambda e: (
            isinstance(e, RuntimeError) and "cannot join thread before it is started" in _message(e)
        ),
        Reason.CANNOT_START_THREAD,
    ),
    (lambda e: "TerminatedWorkerError" in _names(e), Reason.WORKER_DIED),
    (lambda e: "ShutdownExecutorError" in _names(e), Reason.EXECUTOR_BROKEN),
    (
        lambda e: "BrokenProcessPool" in _names(e) and "terminated abruptly" in _message(e),
        Reason.WORKER_DIED,
    ),
    (
        lambda e: isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOSPC),
        Reason.CANNOT_START_PROCESS,
    ),
    # Ray's failures, by name (ray is never imported here); "RayError" among the names makes
    # sure the class is Ray's. Ray's others (RaySystemError, OutOfDiskError, ObjectLostError,
    # TaskCancelledError, ...) fall through: the executor broke.
    (
        lambda e: (
            "RayError" in _names(e)
            and bool(_names(e) & {"OutOfMemoryError", "ObjectStoreFullError"})
        ),
        Reason.OUT_OF_MEMORY,
    ),
    (
        lambda e: (
            "RayError" in _names(e)
            and bool(
                _names(e)
                & {"WorkerCrashedError", "RayActorError", "NodeDiedError", "LocalRayletDiedError"}
            )
        ),
        Reason.WORKER_DIED,
    ),
    (
        lambda e: "RayError" in _names(e) and "GetTimeoutError" in _names(e),
        Reason.EXECUTOR_STALLED,
    ),
    (lambda e: isinstance(e, BrokenExecutor), Reason.EXECUTOR_BROKEN),
]


def classify(exc: BaseException, _depth: int = 0) -> Reason | None:
    """The :class:`Reason` for a native executor failure, or ``None`` if it is not one we know.

    The chain of causes is consulted first, so the root cause decides.
    """
    if isinstance(exc, ResourceFailure):
        return exc.reason
    cause = exc.__cause__ or exc.__context__
    if cause is not None and _depth < 8 and not isinstance(cause, RemoteTraceback):
        inner = classify(cause, _depth + 1)
        if inner is not None and inner is not Reason.EXECUTOR_BROKEN:
            return inner
    for test, reason in _TABLE:
        if test(exc):
            return reason
    return None


_EXITCODES = re.compile(r"exit codes? of the workers are \{([^}]*)\}")
_SIGNAL = re.compile(r"(SIG[A-Z0-9]+)\((-?\d+)\)|(-?\d+)")


def exitcode_from(exc: BaseException) -> int | None:
    """The worker's exit code named in a loky ``TerminatedWorkerError`` message, if any."""
    match = _EXITCODES.search(str(exc))
    if match is None:
        return None
    found = _SIGNAL.search(match.group(1))
    if found is None:
        return None
    return int(found.group(2) or found.group(3))


def to_failure(
    exc: BaseException, rung: str | None = None, exitcode: int | None = None
) -> ResourceFailure:
    """Translate anything the executor machinery raised into a :class:`ResourceFailure`.

    Whatever the machinery raises is infrastructure by construction (tasks run inside a wrapper
    that returns their exceptions as values); an unknown type is ``EXECUTOR_BROKEN``.
    ``exitcode`` is a dead worker's, when the executor knows it but its message does not say.
    """
    if isinstance(exc, ResourceFailure):
        if exc.rung is None:
            exc.rung = rung
        return exc
    reason = classify(exc) or Reason.EXECUTOR_BROKEN
    detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    if reason is Reason.WORKER_DIED:
        code = exitcode_from(exc)
        if code is None:
            code = exitcode
        if code is not None:
            detail = f"worker {describe_exitcode(code)}"
            if code == -signal.SIGKILL:
                detail += " (likely the out-of-memory killer)"
    failure = ResourceFailure(reason, detail, rung)
    failure.__cause__ = exc
    return failure
