"""``sequential``: tasks run one after another in the caller. The rung that always works."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .base import Backend

__all__ = ["SequentialBackend"]


class SequentialBackend(Backend):
    """Runs each submitted call at once, in the caller's thread; futures come back done.

    With a ``task_timeout`` each call runs in a daemon thread of its own, one at a time, so the
    caller can stop waiting for a task that ran over (the task cannot be stopped; a daemon
    thread does not hold up the interpreter's exit). If no thread can start, the call runs in
    the caller's thread, unbounded.
    """

    name = "sequential"
    synchronous = True

    def start(self) -> None:
        pass

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        if self.task_timeout is not None:
            thread = threading.Thread(
                target=_settle, args=(future, fn, args), name="stepdown-sequential", daemon=True
            )
            try:
                thread.start()
                return future
            except RuntimeError:  # no thread to spare: run it here, as without a timeout
                pass
        _settle(future, fn, args)
        return future

    def abandon(self) -> None:
        self.closed = True

    def shutdown(self) -> None:
        self.closed = True


def _settle(future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        future.set_result(fn(*args))
    except Exception as exc:
        future.set_exception(exc)


BACKEND = SequentialBackend
