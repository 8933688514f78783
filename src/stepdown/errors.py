"""The whole exception tree of stepdown, and the table that sorts native failures into it.

::

    Exception
    └── StepdownError
        ├── ResourceFailure            (also a concurrent.futures.BrokenExecutor)
        │   │   the executor could not run tasks; the run steps down to the next rung
        │   └── BackendUnavailable     the rung could not be used at all (missing extra, ...)
        ├── InitializerFailed          (also a BrokenExecutor) the worker initializer raised
        ├── TaskCrashed                a task killed its worker process twice
        ├── TaskTimeout                (also a TimeoutError) a task ran over task_timeout
        └── UsageError                 (also a ValueError) bad arguments
            └── PolicyError            a bad policy: names the file and the key

A task's own exception is never wrapped: it reaches the caller with its own type, with the
worker's traceback attached as ``__cause__`` (a :class:`RemoteTraceback`).

What an executor raises is turned into a :class:`ResourceFailure` at one boundary,
:func:`stepdown.backends.failures.translate`, driven by a classification table.
"""

from __future__ import annotations

import enum
import signal
from concurrent.futures import BrokenExecutor

__all__ = [
    "BackendUnavailable",
    "InitializerFailed",
    "PolicyError",
    "Reason",
    "RemoteTraceback",
    "ResourceFailure",
    "StepdownError",
    "TaskCrashed",
    "TaskTimeout",
    "UsageError",
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


class TaskTimeout(StepdownError, TimeoutError):
    """A task ran longer than ``task_timeout``: the task's outcome, not a reason to step down.

    On a process rung its worker was killed and replaced; on an in-process rung (thread,
    sequential) the task could not be stopped and was abandoned, still running. ``index`` is
    the task's position in the input, ``seconds`` the timeout it ran over.
    """

    def __init__(self, index: int, seconds: float) -> None:
        self.index = index
        self.seconds = seconds
        super().__init__(f"task {index} ran longer than task_timeout={seconds:g} s")

    def __reduce__(self) -> tuple[type[TaskTimeout], tuple[int, float]]:
        return (type(self), (self.index, self.seconds))


class InitializerFailed(StepdownError, BrokenExecutor):
    """The ``initializer`` raised in a worker: no task can run, on any rung, so the run ends.

    The initializer's own exception is ``__cause__`` (with the worker's traceback as its own
    ``__cause__``).
    """


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
    if exitcode == 0:
        return "exited with code 0 in the middle of its work (os._exit(0) in a task?)"
    return f"exit code {exitcode}"
