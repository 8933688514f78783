"""The one thread that starts, connects and shuts down Ray, and importing Ray on first use.

Ray ties the processes it starts to the thread that started them (``PR_SET_PDEATHSIG``), so an
instance started from a short-lived thread dies with that thread: every ``ray.init`` and
``ray.shutdown`` runs on :data:`OWNER`, a long-lived thread, which also serialises attempts (a
connect still hanging past its deadline makes the next attempt fail at once).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ...errors import BackendUnavailable
from ..registry import info

__all__ = ["INSTALL", "OWNER", "Late", "Owner", "import_ray"]

T = TypeVar("T")

INSTALL = info("ray").install or "pip install ray"


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailable(f"ray is not installed; install it with: {INSTALL}") from exc
    return ray


class Late(Exception):
    """The owner did not finish a call in time."""


@dataclass
class _Job:
    call: Callable[[], Any]
    undo: Callable[[], Any] | None
    what: str
    future: Future[Any] = field(default_factory=Future)
    given_up: bool = False


class Owner:
    """The one thread that starts, connects and shuts down Ray (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._current: _Job | None = None

    def call(
        self, call: Callable[[], T], timeout: float, what: str, undo: Callable[[], Any] | None
    ) -> T:
        """``call()`` on the owner thread, waited for at most ``timeout`` seconds.

        Raises what ``call`` raised, or :class:`Late`. A call that returns after its caller
        gave up is undone with ``undo()`` (a late connection is closed, not kept by surprise).
        """
        job = _Job(call, undo, what)
        with self._lock:
            if self._current is not None:
                raise Late(f"an earlier call ({self._current.what}) has not returned yet")
            self._current = job
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="stepdown-ray", daemon=True
                )
                self._thread.start()
            self._jobs.put(job)
        try:
            value: T = job.future.result(timeout=max(timeout, 0.0))
        except FutureTimeout:
            with self._lock:
                if not job.future.done():
                    job.given_up = True
                    raise Late(f"{what} did not finish within {timeout:.1f} s") from None
            value = job.future.result()
        return value

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                value = job.call()
            except BaseException as exc:
                job.future.set_exception(exc)
                self._done(job, undo=False)
                continue
            job.future.set_result(value)
            self._done(job, undo=True)

    def _done(self, job: _Job, undo: bool) -> None:
        with self._lock:
            self._current = None
            late = job.given_up
        if late and undo and job.undo is not None:
            with contextlib.suppress(Exception):
                job.undo()


OWNER = Owner()
