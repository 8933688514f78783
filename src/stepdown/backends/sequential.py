"""``sequential``: tasks run one after another in the caller. The rung that always works."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .base import Backend

__all__ = ["SequentialBackend"]


class SequentialBackend(Backend):
    """Runs each submitted call at once, in the caller's thread; futures come back done."""

    name = "sequential"
    synchronous = True

    def start(self) -> None:
        pass

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def abandon(self) -> None:
        self.closed = True

    def shutdown(self) -> None:
        self.closed = True


BACKEND = SequentialBackend
