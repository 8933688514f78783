"""The one boundary where what an executor raised becomes stepdown's :class:`ResourceFailure`.

::

    native exception ──unwrap (Ray's RayTaskError → its cause)──▶ classify ──▶ Reason
                                                                     │
      the cause chain first (the root cause decides), then the       ▼
      general rows below, then each backend's rows from      ResourceFailure(reason, detail,
      the registry, then BrokenExecutor → EXECUTOR_BROKEN    rung), native one as __cause__

Tasks run inside a wrapper that returns their exceptions as values, so whatever reaches this
boundary is infrastructure by construction; an exception no row knows is ``EXECUTOR_BROKEN``.
Classes are recognised by name, never imported: classifying costs nothing when loky or Ray was
never used.
"""

from __future__ import annotations

import errno
import re
import signal
from collections.abc import Callable
from concurrent.futures import BrokenExecutor

from ..errors import Reason, RemoteTraceback, ResourceFailure, describe_exitcode
from .registry import Failure, infos

__all__ = ["RECEIVING", "classify", "exitcode_from", "translate"]

_DETAIL_MAX = 300
# Ends the detail of a failure the caller met reading a result (its memory, not the workers').
RECEIVING = " while the caller received a result"


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _message(exc: BaseException) -> str:
    return str(exc).lower()


# Failures of the machine, whatever the backend: (test, reason), most specific first.
_GENERAL: list[tuple[Callable[[BaseException], bool], Reason]] = [
    (lambda e: isinstance(e, MemoryError), Reason.OUT_OF_MEMORY),
    (lambda e: _receiving(e) == "MemoryError", Reason.OUT_OF_MEMORY),
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
    (
        lambda e: isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOSPC),
        Reason.CANNOT_START_PROCESS,
    ),
]


def _receiving(exc: BaseException) -> str | None:
    """The error type a stdlib pool's manager thread met reading a result (it then breaks the
    pool and SIGTERMs the workers), from the traceback text it leaves as the cause."""
    if type(exc).__name__ != "_RemoteTraceback" or "result_reader.recv" not in str(exc):
        return None
    last = str(exc).strip().strip("'").strip().splitlines()
    return last[-1].partition(":")[0] if last else None


def _matches(row: Failure, exc: BaseException) -> bool:
    names = _names(exc)
    return (
        bool(names & row.names)
        and (row.within is None or row.within in names)
        and (row.message is None or row.message in _message(exc))
    )


def classify(exc: BaseException, _depth: int = 0) -> Reason | None:
    """The :class:`Reason` for a native executor failure, or ``None`` if no row knows it.

    The chain of causes is consulted first, so the root cause decides (loky's "manager thread
    crashed" with a ``can't start new thread`` cause is a thread problem, not a dead worker).
    """
    if isinstance(exc, ResourceFailure):
        return exc.reason
    cause = exc.__cause__ or exc.__context__
    if cause is not None and _depth < 8 and not isinstance(cause, RemoteTraceback):
        inner = classify(cause, _depth + 1)
        if inner is not None and inner is not Reason.EXECUTOR_BROKEN:
            return inner
    for test, reason in _GENERAL:
        if test(exc):
            return reason
    for backend in infos():
        for row in backend.failures:
            if _matches(row, exc):
                return row.reason
    if isinstance(exc, BrokenExecutor):
        return Reason.EXECUTOR_BROKEN
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


def _unwrap(exc: BaseException) -> BaseException:
    """The failure a backend's wrapper class carries (Ray's ``RayTaskError``), with the
    worker's traceback attached; anything else as it is."""
    names = _names(exc)
    cause = getattr(exc, "cause", None)
    wrapped = any(names & backend.wrappers for backend in infos())
    if not wrapped or not isinstance(cause, BaseException):
        return exc
    cause.__cause__ = RemoteTraceback(str(getattr(exc, "traceback_str", exc)))
    return cause


def _detail(exc: BaseException) -> str:
    # A native message may run to pages (Ray's out-of-memory kill lists the top memory users):
    # the first line is the detail (the first that says something: multiprocessing's
    # "bootstrapping phase" message starts with a newline).
    said = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    first = f"{type(exc).__name__}: {said}" if said else type(exc).__name__
    return first if len(first) <= _DETAIL_MAX else first[:_DETAIL_MAX] + "..."


def translate(
    exc: BaseException, rung: str | None = None, exitcode: int | None = None
) -> ResourceFailure:
    """Translate anything the executor machinery raised into a :class:`ResourceFailure`.

    ``rung`` names the rung (``"loky(3)"``) when the failure does not already; ``exitcode`` is a
    dead worker's, when the executor knows it but its message does not say.
    """
    if isinstance(exc, ResourceFailure):
        if exc.rung is None:
            exc.rung = rung
        return exc
    native = _unwrap(exc)
    reason = classify(native) or Reason.EXECUTOR_BROKEN
    detail = _detail(native)
    receiving = None if native.__cause__ is None else _receiving(native.__cause__)
    if receiving is not None:
        detail = f"{receiving}{RECEIVING}"
        return _failure(reason, detail, rung, native)
    if reason is Reason.WORKER_DIED:
        code = exitcode_from(native)
        if code is None:
            code = exitcode
        if code is not None:
            detail = f"worker {describe_exitcode(code)}"
            if code == -signal.SIGKILL:
                detail += " (likely the out-of-memory killer)"
    return _failure(reason, detail, rung, native)


def _failure(
    reason: Reason, detail: str, rung: str | None, native: BaseException
) -> ResourceFailure:
    failure = ResourceFailure(reason, detail, rung)
    failure.__cause__ = native
    return failure
