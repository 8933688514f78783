"""The wrapper every batch of tasks runs in, on whatever backend.

``run_batch`` calls the task function on each item and returns the task's exceptions as
values. Whatever else fails (the executor, the pickling of the batch, the worker's death) thus
surfaces as the executor's failure, never as a task's: the runner can tell "the task failed"
from "the executor broke" by construction, without inspecting exception types.

This module runs inside worker processes: it imports only the standard library (and
cloudpickle, lazily, for functions shipped as bytes).
"""

from __future__ import annotations

import os
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = ["BatchResult", "TaskException", "dumps_function", "run_batch"]


class TaskException(NamedTuple):
    """A task's exception as it crossed a process boundary, with the worker's traceback."""

    exc: BaseException
    tb: str


class BatchResult(NamedTuple):
    """What one batch produced: values in item order (``None`` where a task raised)."""

    values: list[Any]
    errors: dict[int, BaseException | TaskException] | None
    elapsed: float
    pid: int


# Functions arrive in workers as cloudpickle bytes (lambdas, closures and __main__ functions
# included); unpickling once per worker instead of once per batch matters for tiny batches.
_FUNCTIONS: dict[bytes, Callable[[Any], Any]] = {}
_FUNCTIONS_MAX = 8


def dumps_function(fn: Callable[[Any], Any]) -> bytes:
    """Serialise ``fn`` for workers with cloudpickle (by reference when importable)."""
    import cloudpickle

    data: bytes = cloudpickle.dumps(fn)
    return data


def _function(fn: Callable[[Any], Any] | bytes) -> Callable[[Any], Any]:
    if not isinstance(fn, bytes):
        return fn
    found = _FUNCTIONS.get(fn)
    if found is None:
        import cloudpickle

        found = cloudpickle.loads(fn)
        if len(_FUNCTIONS) >= _FUNCTIONS_MAX:
            _FUNCTIONS.pop(next(iter(_FUNCTIONS)))
        _FUNCTIONS[fn] = found
    return found


def _portable(exc: BaseException) -> TaskException:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        replacement = RuntimeError(
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
            "(the task's exception could not be pickled, so this stands in for it)"
        )
        return TaskException(replacement, tb)
    return TaskException(exc, tb)


def run_batch(
    fn: Callable[[Any], Any] | bytes, items: Sequence[Any], remote: bool = False
) -> BatchResult:
    """Run ``fn`` on each item; a task's exception is kept as a value, never raised.

    ``remote`` batches run in another process: their exceptions travel with the formatted
    traceback, and ``SystemExit`` raised by a task is caught too (it would end the worker).
    """
    func = _function(fn)
    values: list[Any] = []
    errors: dict[int, BaseException | TaskException] | None = None
    catch: type[BaseException] | tuple[type[BaseException], ...] = (
        (Exception, SystemExit) if remote else Exception
    )
    start = time.perf_counter()
    for position, item in enumerate(items):
        try:
            values.append(func(item))
        except catch as exc:
            if errors is None:
                errors = {}
            errors[position] = _portable(exc) if remote else exc
            values.append(None)
    return BatchResult(values, errors, time.perf_counter() - start, os.getpid())
