"""``stepdown.Executor``: the step-down ladder behind the ``concurrent.futures`` interface."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor as _Executor
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from .backends.failures import translate
from .options import LadderSpec, Options
from .planning.setup import Setup, prepare
from .runner.engine import Engine
from .runner.flights import Inbox
from .runner.report import Report

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import ExecutorOptions

__all__ = ["Executor"]

T = TypeVar("T")


class _Call:
    """One submitted call; pickled with cloudpickle so lambdas and closures reach workers."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(self, future: Future[Any], fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __reduce__(self) -> tuple[Callable[[bytes], _Call], tuple[bytes]]:
        import cloudpickle

        return (_loads_call, (cloudpickle.dumps((self.fn, self.args, self.kwargs)),))


def _loads_call(data: bytes) -> _Call:
    import pickle

    fn, args, kwargs = pickle.loads(data)
    return _Call(Future(), fn, args, kwargs)


def _apply(call: _Call) -> Any:
    return call.fn(*call.args, **call.kwargs)


class Executor(_Executor):
    """A ``concurrent.futures.Executor`` that steps down instead of breaking.

    ``submit`` returns a future that gets the call's result or its own exception; a resource
    failure of the current rung moves unfinished calls to the next rung, it never fails a
    future. Calls in flight on a failed process rung may run twice (see the semantics docs).

    >>> with Executor(ladder=["thread:2"]) as ex:
    ...     ex.submit(pow, 2, 10).result()
    1024
    """

    def __init__(
        self,
        ladder: LadderSpec | None = None,
        *,
        setup: Setup | None = None,
        **options: Unpack[ExecutorOptions],
    ) -> None:
        """``ladder`` and the keyword options are :class:`~stepdown.options.Options`'. A
        ``setup`` (from :func:`stepdown.planning.setup.prepare`) is used as it is instead of
        planning again; the joblib backend passes the one it made."""
        # Each call is its own batch; its exception is set on its future, never raised here.
        chosen = Options(ladder=ladder, errors="return", ordered=False, batch_size=1, **options)
        self._inbox = Inbox()
        # Calls taken by the runner and not yet delivered, by the runner's index.
        self._taken: dict[int, _Call] = {}
        self._count = 0
        self._engine = Engine(
            _apply,
            self._inbox,
            setup or prepare(chosen, None),
            chosen,
            accept=self._accept,
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._shutdown = False
        self._crash: BaseException | None = None

    @property
    def report(self) -> Report:
        """What the executor has done so far."""
        return self._engine.report

    def _accept(self, call: _Call) -> bool:
        if call.future.set_running_or_notify_cancel():
            self._taken[self._count] = call
            self._count += 1
            return True
        return False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[T] = Future()
            if self._thread is None:
                thread = threading.Thread(
                    target=self._dispatch, name="stepdown-executor", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError as exc:
                    raise translate(exc, "stepdown.Executor") from exc
                self._thread = thread
            self._inbox.put(_Call(future, fn, args, kwargs))
        return future

    def _dispatch(self) -> None:
        try:
            for index, value, ok in self._engine:
                future = self._taken.pop(index).future
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except BaseException as exc:
            self._crash = exc
            for call in list(self._taken.values()):
                if not call.future.done():
                    call.future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    taken, _ = self._inbox.take(1 << 30, lambda call: True)
                    if not taken:
                        break
                    for call in taken:
                        call.future.cancel()
            self._inbox.close()
            thread = self._thread
        if wait and thread is not None:
            thread.join()
