"""``thread``: a ThreadPoolExecutor in the caller's process."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .base import Backend

__all__ = ["ThreadBackend"]


class ThreadBackend(Backend):
    """Threads share the caller's memory; a task that exhausts it takes the caller with it.

    ``ThreadPoolExecutor.submit`` queues the call *before* it starts a thread, so when the
    thread cannot start (``can't start new thread``) the call is queued anyway and an existing
    thread may still run it. Each call therefore runs behind a future of our own that the
    runner can cancel: a call is run once, by the pool or by the next rung, never by both.
    """

    name = "thread"

    def __init__(self, workers: int, options: Any = None) -> None:
        super().__init__(workers, options)
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="stepdown-thread")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        assert self._pool is not None, "start() first"
        ours: Future[Any] = Future()

        def call() -> None:
            if not ours.set_running_or_notify_cancel():
                return
            try:
                ours.set_result(fn(*args))
            except BaseException as exc:
                ours.set_exception(exc)

        try:
            self._pool.submit(call)
        except BaseException as exc:
            if ours.cancel():
                raise
            # A thread already took the call: it will finish; the pool itself is not usable.
            self.broken = exc
        return ours

    def health(self) -> str | None:
        pool = self._pool
        if pool is not None and not pool._threads and pool._work_queue.qsize():
            return "no thread is alive to run the queued tasks"
        return None

    def abandon(self) -> None:
        if self._pool is not None and not self.closed:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.closed = True

    def shutdown(self) -> None:
        if self._pool is not None and not self.closed:
            self._pool.shutdown(wait=True)
        self.closed = True


BACKEND = ThreadBackend
