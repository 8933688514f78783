"""``process``: the standard library's ProcessPoolExecutor, start method as an option."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from ._pool import PoolBackend
from .worker import prepare

__all__ = ["ProcessBackend"]


class ProcessBackend(PoolBackend):
    """Fastest to start with ``fork`` (~25 ms); ``forkserver``/``spawn`` avoid forking a big,
    threaded caller. Functions travel as cloudpickle bytes, so lambdas and closures work."""

    name = "process"

    def _forks(self) -> bool:
        method = multiprocessing.get_context(self.options.get("start_method")).get_start_method()
        return method == "fork"

    def _create(self) -> Executor:
        method = self.options.get("start_method")
        context = multiprocessing.get_context(method)
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=prepare)

    def abandon(self) -> None:
        # Before the workers are killed: the pool's manager then fails every pending call, and
        # on a call the runner has cancelled Python 3.11's raises InvalidStateError and prints
        # its traceback (3.12 ignores it). The call stays where the manager looks it up (it
        # may still be queued by id), with a stand-in future that takes the failure quietly.
        pending = getattr(self._pool, "_pending_work_items", None) or {}
        for item in list(pending.values()):
            if item.future.cancelled() and not isinstance(item.future, _Cancelled):
                item.future = _Cancelled()
        super().abandon()


class _Cancelled(Future[Any]):
    """A cancelled future that ignores a result or an exception set on it afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.cancel()

    def set_result(self, result: Any) -> None:
        pass

    def set_exception(self, exception: BaseException | None) -> None:
        pass


BACKEND = ProcessBackend
