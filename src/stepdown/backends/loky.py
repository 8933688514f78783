"""``loky``: a private loky executor (fork+exec workers), never joblib's shared one."""

from __future__ import annotations

from concurrent.futures import Executor

from ._pool import PoolBackend
from .worker import prepare

__all__ = ["LokyBackend"]


class LokyBackend(PoolBackend):
    """loky starts workers by fork+exec: a big caller cannot hit ENOMEM at fork, at the cost
    of a slower start (~110 ms). The executor is our own, so breaking it harms no one else."""

    name = "loky"

    def _create(self) -> Executor:
        from loky import ProcessPoolExecutor

        pool: Executor = ProcessPoolExecutor(max_workers=self.workers, initializer=prepare)
        return pool

    def _shutdown_now(self) -> None:
        # Killed workers end at once, so waiting for the pool's manager thread costs nothing
        # (and its feeder thread is waited for by let_go: tests/test_exit.py).
        self._pool.shutdown(wait=True, kill_workers=True)


BACKEND = LokyBackend
