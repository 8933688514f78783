"""``stepdown.Executor``: the step-down ladder behind the ``concurrent.futures`` interface."""

from __future__ import annotations

import functools
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import Executor as _Executor
from typing import TYPE_CHECKING, Any, TypeVar

from .backends.failures import translate
from .errors import UsageError
from .options import LadderSpec, Options
from .planning.setup import Setup, prepare
from .runner.batch import Call, apply_call, apply_chunk, dumps, loads_call
from .runner.engine import Engine
from .runner.flights import Inbox
from .runner.progress import Bar, progress_bar
from .runner.report import Report

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import ExecutorOptions

__all__ = ["Executor"]

T = TypeVar("T")


class _Call:
    """One submitted call, with its future. It travels as :class:`~.runner.batch.Call`: its
    function pickled with cloudpickle, so lambdas and closures reach workers, its arguments by
    the pool; rebuilt by a function of the light worker-side module, so a worker never imports
    the executor."""

    __slots__ = ("args", "fn", "future", "kwargs", "pickled")

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: Any,
        kwargs: Any,
        pickled: _Pickled | None = None,
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.pickled = pickled  # shared by the chunks of one map: their function, pickled once

    def __reduce__(
        self,
    ) -> tuple[Callable[[bytes, Any, Any], Call], tuple[bytes, Any, Any]]:
        fn = dumps(self.fn) if self.pickled is None else self.pickled.data()
        return (loads_call, (fn, self.args, self.kwargs))


class _Pickled:
    """A function pickled when a process pool first needs it (never, in-process), then kept."""

    __slots__ = ("_data", "fn")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._data: bytes | None = None

    def data(self) -> bytes:
        if self._data is None:
            self._data = dumps(self.fn)
        return self._data


def _start_method(mp_context: Any) -> str | None:
    if mp_context is None or isinstance(mp_context, str):
        return mp_context
    method = getattr(mp_context, "get_start_method", None)
    if method is None:
        raise UsageError(
            f"mp_context must be a multiprocessing context or a start method, not {mp_context!r}"
        )
    name: str = method()
    return name


class Executor(_Executor):
    """A ``concurrent.futures.Executor`` that steps down instead of breaking: a drop-in for
    ``ProcessPoolExecutor`` (same arguments), with stepdown's options by keyword.

    ``submit`` returns a future that gets the call's result or its own exception; a resource
    failure of the current rung moves unfinished calls to the next rung, it never fails a
    future. Calls in flight on a failed process rung may run twice (see the semantics docs).
    ``max_workers`` caps every rung of the policy's ladder; ``mp_context`` (a context or a start
    method name) is the start method of process rungs; ``initializer(*initargs)`` runs in each
    worker before its first call, and if it raises, every pending future and later ``submit``
    fail with :class:`~stepdown.errors.InitializerFailed` (a ``BrokenExecutor``, as the
    stdlib's ``BrokenProcessPool``); ``max_tasks_per_child`` renews workers after that many
    calls. ``progress`` counts finished calls on a bar naming the rung that runs (``None``:
    where a person is watching, once the executor has run a second; see ``stepdown.run``).

    >>> with Executor(2, ladder=["thread:2"]) as ex:
    ...     ex.submit(pow, 2, 10).result()
    1024
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        ladder: LadderSpec | None = None,
        setup: Setup | None = None,
        progress: bool | None = None,
        **options: Unpack[ExecutorOptions],
    ) -> None:
        """The keyword options are :class:`~stepdown.options.Options`'. A ``setup`` (from
        :func:`stepdown.planning.setup.prepare`) is used as it is instead of planning again;
        the joblib backend passes the one it made."""
        given: dict[str, Any] = dict(options)
        for name, value in (
            ("max_workers", max_workers),
            ("initializer", initializer),
            ("start_method", _start_method(mp_context)),
        ):
            if value is not None:
                given[name] = value
        if initargs != ():
            given["initargs"] = initargs
        # Each call is its own batch; its exception is set on its future, never raised here.
        chosen = Options(
            ladder=ladder,
            errors="return",
            ordered=False,
            batch_size=1,
            progress=progress,
            **given,
        )
        self._inbox = Inbox()
        # Calls taken by the runner and not yet delivered, by the runner's index.
        self._taken: dict[int, _Call] = {}
        self._count = 0
        self._engine = Engine(
            apply_call,
            self._inbox,
            setup or prepare(chosen, None),
            chosen,
            accept=self._accept,
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._shutdown = False
        self._crash: BaseException | None = None
        # Its total grows with each call submitted; the dispatch thread (or shutdown, if no
        # call came) closes it.
        self._bar: Bar | None = progress_bar(None, progress, self._engine.report, unit="call")

    @property
    def report(self) -> Report:
        """What the executor has done so far, up to this moment."""
        return self._engine.live_report()

    def _accept(self, call: _Call) -> bool:
        if call.future.set_running_or_notify_cancel():
            self._taken[self._count] = call
            self._count += 1
            return True
        return False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._submit(_Call(Future(), fn, args, kwargs))

    def _submit(self, call: _Call) -> Future[Any]:
        with self._lock:
            if self._crash is not None:
                raise self._crash
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._thread is None:
                thread = threading.Thread(
                    target=self._dispatch, name="stepdown-executor", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError as exc:
                    raise translate(exc, "stepdown.Executor") from exc
                self._thread = thread
            if self._bar is not None:
                self._bar.grow()
            self._inbox.put(call)
        return call.future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[T]:
        """``fn`` over the iterables zipped, results in order, as ``ProcessPoolExecutor.map``:
        calls are submitted at once, ``timeout`` counts from this call, and each call runs a
        chunk of ``chunksize`` items (``None``: a quarter of the items per worker, as
        ``multiprocessing.Pool.map`` picks)."""
        if chunksize is not None and (
            isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
        ):
            raise UsageError(f"chunksize must be a whole number of at least 1, not {chunksize!r}")
        arguments = list(zip(*iterables, strict=False))
        if chunksize is None:
            workers = max((r.workers or 1 for r in self._engine.rungs), default=1)
            chunksize = max(1, math.ceil(len(arguments) / (4 * workers)))
        end = None if timeout is None else time.monotonic() + timeout
        # One function for every chunk, pickled once.
        chunk = functools.partial(apply_chunk, fn)
        pickled = _Pickled(chunk)
        futures = [
            self._submit(_Call(Future(), chunk, (arguments[i : i + chunksize],), {}, pickled))
            for i in range(0, len(arguments), chunksize)
        ]
        return itertools.chain.from_iterable(_in_turn(futures, end))

    def _dispatch(self) -> None:
        try:
            for index, value, ok in self._engine:
                future = self._taken.pop(index).future
                if self._bar is not None:
                    self._bar.update()
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except BaseException as exc:
            with self._lock:
                self._crash = exc
            waiting, _ = self._inbox.take(1 << 30, lambda call: True)
            for call in [*self._taken.values(), *waiting]:
                if not call.future.done():
                    call.future.set_exception(exc)
        finally:
            if self._bar is not None:
                self._bar.close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, KeyboardInterrupt):
            # A Ctrl-C stops the work, as it would a loop: nothing more starts, the pool goes.
            self.shutdown(wait=False, cancel_futures=True)
            self._engine.interrupt(KeyboardInterrupt())
        self.shutdown(wait=True)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, kill_workers: bool = False
    ) -> None:
        """As ``concurrent.futures``; ``kill_workers=True`` (as loky's) also stops the calls
        running in worker processes now, which fail with ``CancelledError``, instead of letting
        them finish (calls running in threads cannot be stopped: they finish)."""
        with self._lock:
            self._shutdown = True
            if kill_workers:
                cancel_futures = True
                self._engine.interrupt(CancelledError("shut down with kill_workers=True"))
            if cancel_futures:
                taken, _ = self._inbox.take(1 << 30, lambda call: True)
                for call in taken:
                    call.future.cancel()
            self._inbox.close()
            thread = self._thread
        if thread is None and self._bar is not None:
            self._bar.close()
        if wait and thread is not None:
            thread.join()


def _in_turn(futures: list[Future[list[T]]], end: float | None) -> Iterator[list[T]]:
    """Each future's result in turn, by ``end`` (monotonic); the rest cancelled on the way out."""
    try:
        for future in futures:
            yield future.result(None if end is None else max(0.0, end - time.monotonic()))
    finally:
        for future in futures:
            future.cancel()
