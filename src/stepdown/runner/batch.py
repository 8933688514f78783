"""The wrapper every batch of tasks runs in, on whatever backend.

``run_batch`` calls the task function on each item and returns the task's exceptions as
values. Whatever else fails (the executor, the pickling of the batch, the worker's death) thus
surfaces as the executor's failure, never as a task's: the runner can tell "the task failed"
from "the executor broke" by construction, without inspecting exception types.

This module runs inside worker processes: it imports only the standard library (and
cloudpickle, lazily, for functions shipped as bytes).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import sys
import threading
import time
import traceback
import types
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import peak
from .watching import IDLE, INITIALIZING, Watch, noter

__all__ = [
    "BatchResult",
    "Call",
    "Duties",
    "Starred",
    "TaskException",
    "add_note",
    "apply_call",
    "apply_chunk",
    "dumps_function",
    "loads_call",
    "run_batch",
]


class Call(NamedTuple):
    """One ``Executor.submit`` call as a worker gets it (see :func:`loads_call`)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def loads_call(fn: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    """A submitted call, from its function's cloudpickle bytes (unpickled once per worker) and
    its arguments (pickled by the pool, as ``ProcessPoolExecutor`` pickles them)."""
    return Call(_loads(fn), args, kwargs)


def apply_call(call: Call) -> Any:
    """The executor's task function: run one submitted call."""
    return call.fn(*call.args, **call.kwargs)


def apply_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """One call of ``Executor.map``: ``fn`` over a chunk of argument tuples."""
    return [fn(*args) for args in chunk]


class Starred:
    """``fn(*args)`` for one tuple of arguments: ``map`` over several iterables, zipped."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: tuple[Any, ...]) -> Any:
        return self.fn(*args)


class TaskException(NamedTuple):
    """A task's exception as it crossed a process boundary, with the worker's traceback.

    It travels as cloudpickle bytes, so an exception class defined in a script or notebook
    (pickled by value) comes back as itself."""

    exc: BaseException
    tb: str

    def __reduce__(self) -> tuple[Any, ...]:
        return _task_exception, (dumps(self.exc), self.tb)


def _task_exception(data: bytes, tb: str) -> TaskException:
    return TaskException(pickle.loads(data), tb)


class BatchResult(NamedTuple):
    """What one batch produced: values in item order (``None`` where a task raised).

    ``declined``: nothing ran, because this worker process has run its ``max_tasks_per_child``
    (the runner replaces the pool and sends the batch again). ``init_error``: nothing ran,
    because the run's initializer raised here.
    """

    values: list[Any]
    errors: dict[int, BaseException | TaskException] | None
    elapsed: float
    pid: int
    declined: bool = False
    init_error: BaseException | TaskException | None = None
    packed: bytes | None = None
    peak: int | None = None  # bytes the batch held at most over its start (see .peak)
    overran: int | None = None  # the share a task ran out of (MemoryError): it needs more
    resident: int | None = None  # what the worker held before the tasks (its own footprint)

    def __reduce__(self) -> tuple[Any, ...]:
        # Values cross to the caller as a pickle of their own, opened by the runner: one that
        # cannot be rebuilt there (or runs out of memory) fails its tasks, not the pool's
        # result channel; one that cannot be pickled here fails its own task.
        if self.packed is not None or not self.values:
            return BatchResult, tuple(self)
        packed, errors = _pack(self.values, self.errors)
        return BatchResult, ([], errors, *self[2:6], packed, *self[7:])

    def unpacked(self) -> BatchResult:
        """This result with its values rebuilt; raises what rebuilding them raises."""
        if self.packed is None:
            return self
        return self._replace(values=pickle.loads(self.packed), packed=None)


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` where there is one (Python 3.11+) and the type takes it."""
    adder = getattr(exc, "add_note", None)
    # A type that refuses notes reaches the caller as it is.
    with contextlib.suppress(Exception):
        if adder is not None:
            adder(note)


def _pack(
    values: list[Any], errors: dict[int, BaseException | TaskException] | None
) -> tuple[bytes, dict[int, BaseException | TaskException] | None]:
    try:
        return pickle.dumps(values, pickle.HIGHEST_PROTOCOL), errors
    except Exception:
        pass
    try:  # a lambda, or a class from the script's __main__, among them
        return dumps(values), errors
    except Exception:
        pass
    kept: list[Any] = []
    errors = dict(errors or {})
    for position, value in enumerate(values):
        try:
            dumps(value)
        except Exception as exc:
            add_note(exc, "stepdown: the task's result could not be pickled to send it back")
            errors[position] = _portable(exc)
            value = None
        kept.append(value)
    return dumps(kept), errors


class Duties(NamedTuple):
    """What a worker does around a run's tasks, besides calling the function.

    ``run`` is the run's token: the run's ``(initializer, initargs)`` (shipped with the function
    to another process, see :func:`dumps_function`; here for an in-process batch) runs once per
    worker and run, before the first task (per thread on the thread rung). ``max_tasks``: the
    most tasks one worker process may run. ``watch``: where to say which task runs, at each
    task if ``each_task`` (a task timeout), else only as the batch starts and ends (cheaper).
    ``memory_share``: the data a worker process's tasks may add (see :func:`.peak.cap`).
    """

    run: str
    initializer: Initializer | None = None
    max_tasks: int | None = None
    watch: Watch | None = None
    each_task: bool = True
    memory_share: int | None = None


# Per worker process: tasks run so far (for max_tasks; with its pid, as a forked worker
# inherits its parent's).
_tasks_run = (0, 0)
# Per worker process: when a batch's memory was last measured. A measurement costs ~40 µs, a
# tiny batch not much more: batches that start within MEASURE_EVERY of a measured one are not
# measured (a task that holds much memory takes long to fill it, and its batch is measured).
_measured_at = -1.0
MEASURE_EVERY = 0.01
# Per thread: the runs whose initializer has run here (the newest few).
_local = threading.local()
_RUNS_KEPT = 16


# Functions arrive in workers as cloudpickle bytes (lambdas, closures and __main__ functions
# included); unpickling once per worker instead of once per batch matters for tiny batches.
Initializer = tuple[Callable[..., object], tuple[Any, ...]]
_FUNCTIONS: dict[bytes, Any] = {}
_FUNCTIONS_MAX = 8


def dumps_function(fn: Callable[[Any], Any], initializer: Initializer | None = None) -> bytes:
    """Serialise ``fn`` and the run's ``(initializer, initargs)`` for workers with cloudpickle
    (by reference when importable). One pickle, so that functions pickled by value (from
    ``__main__``) share their module's globals in the worker, as the initializer expects.

    A plain function of an importable module, with no initializer, is a reference either way:
    while cloudpickle is not imported yet, the standard pickle writes the same, without
    importing it (~6 ms of a cold script's start). Once it is, cloudpickle decides, so that a
    module registered with ``cloudpickle.register_pickle_by_value`` (code a Ray cluster's
    nodes do not have) still goes by value."""
    if initializer is None and "cloudpickle" not in sys.modules and _importable(fn):
        with contextlib.suppress(pickle.PicklingError, AttributeError, TypeError):
            return pickle.dumps((fn, None), protocol=pickle.DEFAULT_PROTOCOL)
    return dumps((fn, initializer))


def _importable(fn: Any) -> bool:
    plain = isinstance(fn, (types.FunctionType, types.BuiltinFunctionType))
    module = getattr(fn, "__module__", None)
    return plain and module is not None and module not in ("__main__", "__mp_main__")


def dumps(obj: Any) -> bytes:
    """cloudpickle's bytes for ``obj``, except that code pickled by value keeps its file name,
    so a worker's traceback points at the task's real lines."""
    import io

    buffer = io.BytesIO()
    _pickler()(buffer, protocol=pickle.DEFAULT_PROTOCOL).dump(obj)
    return buffer.getvalue()


@functools.cache
def _pickler() -> type[Any]:
    import cloudpickle

    reduce_code = getattr(cloudpickle.cloudpickle, "_code_reduce", None)

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, types.CodeType) and reduce_code is not None:
                # cloudpickle writes "<dynamic-code>" for the file: keep the real one.
                rebuild, args = reduce_code(obj)
                args = tuple(obj.co_filename if a == "<dynamic-code>" else a for a in args)
                return rebuild, args
            return super().reducer_override(obj)

    return Pickler


def _loads(data: bytes) -> Any:
    """``data`` unpickled, once per worker for the last few (functions come with every call)."""
    found = _FUNCTIONS.get(data)
    if found is None:
        found = pickle.loads(data)
        if len(_FUNCTIONS) >= _FUNCTIONS_MAX:
            _FUNCTIONS.pop(next(iter(_FUNCTIONS)))
        _FUNCTIONS[data] = found
    return found


def _function(
    fn: Callable[[Any], Any] | bytes, duties: Duties | None
) -> tuple[Callable[[Any], Any], Initializer | None]:
    if not isinstance(fn, bytes):
        return fn, None if duties is None else duties.initializer
    found: tuple[Callable[[Any], Any], Initializer | None] = _loads(fn)
    return found


def _portable(exc: BaseException) -> TaskException:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None  # kept as text: the task's frames (and what they hold) can go
    try:
        pickle.loads(dumps(exc))
    except Exception:
        replacement = RuntimeError(
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
            "(the task's exception could not be pickled, so this stands in for it)"
        )
        return TaskException(replacement, tb)
    return TaskException(exc, tb)


def _initialize(run: str, initializer: Initializer) -> None:
    runs: OrderedDict[str, None] | None = getattr(_local, "runs", None)
    if runs is None or _local.pid != os.getpid():  # a forked child starts with none
        runs = _local.runs = OrderedDict()
        _local.pid = os.getpid()
    if run in runs:
        return
    function, args = initializer
    function(*args)
    runs[run] = None
    while len(runs) > _RUNS_KEPT:
        runs.popitem(last=False)


def run_batch(
    fn: Callable[[Any], Any] | bytes,
    items: Sequence[Any],
    remote: bool = False,
    duties: Duties | None = None,
    tag: int = 0,
) -> BatchResult:
    """Run ``fn`` on each item; a task's exception is kept as a value, never raised.

    Whatever its base class (``SystemExit``, ``asyncio.CancelledError``, a user's own
    ``BaseException``) except ``KeyboardInterrupt``: that one means "stop the run" (a user's
    Ctrl-C reaches workers as well as the caller) and goes up to the runner, which stops.
    ``remote`` batches run in another process: their exceptions travel with the formatted
    traceback. ``duties`` (initializer, worker recycling, the timeout watch) apply when given;
    ``tag`` names the batch to the watch.
    """
    global _tasks_run, _measured_at
    pid = os.getpid()
    ran = _tasks_run[1] if _tasks_run[0] == pid else 0
    limit = None if duties is None else duties.max_tasks
    if remote and limit is not None and ran and ran + len(items) > limit:
        return BatchResult([], None, 0.0, pid, declined=True)
    func, initializer = _function(fn, duties)
    note = None if duties is None else noter(duties.watch)
    if initializer is not None:
        if note is not None:
            note(tag, INITIALIZING)
        try:
            _initialize(duties.run if duties is not None else "", initializer)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            if note is not None:
                note(tag, IDLE)
            return BatchResult([], None, 0.0, pid, init_error=_portable(exc) if remote else exc)
    each = note if duties is not None and duties.each_task else None
    if note is not None and each is None:
        note(tag, 0)
    values: list[Any] = []
    errors: dict[int, BaseException | TaskException] | None = None
    share = None if duties is None else duties.memory_share
    if remote and share is not None:  # a cap is lifted after each batch: none is left to lift
        peak.cap(share)
    start = time.perf_counter()
    measure = remote and start - _measured_at >= MEASURE_EVERY
    base = peak.start() if measure else None
    if measure:
        _measured_at = start
    overran = None
    try:
        for position, item in enumerate(items):
            if each is not None and not each(tag, position):
                break  # abandoned: the runner has sent the rest elsewhere
            try:
                values.append(func(item))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                capped = share is not None and isinstance(exc, MemoryError)
                if capped:
                    peak.cap(None)  # room to record it; the task's memory goes with its frames
                    overran = share
                if errors is None:
                    errors = {}
                errors[position] = _portable(exc) if remote else exc
                values.append(None)
                if capped:
                    peak.cap(share)
    finally:
        if remote and share is not None:
            peak.cap(None)
    if note is not None:
        note(tag, IDLE)
    if remote:
        _tasks_run = (pid, ran + len(items))
    elapsed = time.perf_counter() - start
    held = peak.since(base)
    return BatchResult(values, errors, elapsed, pid, peak=held, overran=overran, resident=base)
