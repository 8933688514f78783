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


BACKEND = ProcessBackend
