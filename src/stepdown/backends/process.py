"""``process``: the standard library's ProcessPoolExecutor, start method as an option."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor

from ._pool import PoolBackend

__all__ = ["ProcessBackend"]


class ProcessBackend(PoolBackend):
    """Fastest to start with ``fork`` (~25 ms); ``forkserver``/``spawn`` avoid forking a big,
    threaded caller. Functions travel as cloudpickle bytes, so lambdas and closures work."""

    name = "process"

    def _create(self) -> Executor:
        method = self.options.get("start_method")
        context = multiprocessing.get_context(method)
        return ProcessPoolExecutor(self.workers, mp_context=context)

    def _shutdown_now(self) -> None:
        # The pool's manager thread leaves only when no work is pending, and work sent to
        # workers we killed never comes back: without this, the interpreter's exit handler
        # would join that thread forever. The runner has given up on these futures already.
        pending = self._pool._pending_work_items
        for item in list(pending.values()):
            item.future.cancel()
        pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


BACKEND = ProcessBackend
