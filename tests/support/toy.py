"""A toy backend, added the way any backend is: this module plus one registry entry.

``toy`` runs each submitted call on a thread of its own (a new daemon thread per call, at most
``workers`` at once): not useful, but a complete backend. :func:`register_toy` adds it to the
registry; the contract suite then runs on it like on every built-in backend.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from stepdown.backends.base import Backend
from stepdown.backends.registry import BackendInfo, register

__all__ = ["INFO", "ToyBackend", "register_toy"]

INFO = BackendInfo("toy", __name__, in_process=True, pids=(1, 0))


class ToyBackend(Backend):
    """One thread per call, ``workers`` at a time."""

    name = "toy"

    def __init__(self, workers: int, options: Any = None) -> None:
        super().__init__(workers, options)
        self._slots = threading.Semaphore(workers)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        pass

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()

        def call() -> None:
            with self._slots:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)

        thread = threading.Thread(target=call, name="stepdown-toy", daemon=True)
        thread.start()
        self._threads.append(thread)
        return future

    def abandon(self) -> None:
        self.closed = True

    def shutdown(self) -> None:
        for thread in self._threads:
            thread.join()
        self.closed = True


BACKEND = ToyBackend


def register_toy() -> None:
    """Add ``toy`` to the registry (idempotent)."""
    register(INFO)
