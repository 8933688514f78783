"""What travels with each batch to a backend: the function, and the worker's duties.

For another process the function is pickled once, with the run's initializer (one pickle, so
that both share the globals of a module pickled by value); in-process batches take both as
they are. The duties (:class:`~stepdown.runner.batch.Duties`) say what a worker does besides
the tasks: the initializer, worker recycling, and where to say which task it is on (for
``task_timeout``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..backends.base import Backend
from ..errors import InitializerFailed, RemoteTraceback
from ..options import Options
from .batch import Duties, Initializer, TaskException, dumps_function, run_batch
from .memory import MemoryCare
from .timeouts import Timeouts

__all__ = ["Shipping", "initializer_failed"]


class Shipping:
    """Submits batches of one run; each gets a ``tag`` that names it to the timeout watch."""

    def __init__(
        self, fn: Callable[[Any], Any], options: Options, timeouts: Timeouts, memory: MemoryCare
    ) -> None:
        self.fn = fn
        self.options = options
        self.timeouts = timeouts
        self.memory = memory
        self.tag = 0
        self._run = os.urandom(16).hex()
        self._payload: bytes | None = None

    @property
    def payload(self) -> bytes:
        """The function (and initializer) for another process; raises if it cannot pickle."""
        if self._payload is None:
            self._payload = dumps_function(self.fn, self._initializer())
        return self._payload

    def unpicklable(self) -> str | None:
        """Why the function cannot go to another process (only in-process rungs can run it)."""
        try:
            self.payload  # noqa: B018
        except Exception as exc:
            return f"the function cannot be pickled: {type(exc).__name__}: {exc}"
        return None

    def submit(self, backend: Backend, items: list[Any]) -> Future[Any]:
        """Submit ``items`` as one batch (its tag is then :attr:`tag`)."""
        self.tag += 1
        if backend.in_process:
            duties = self._duties(backend, self._initializer())
            return backend.submit(run_batch, self.fn, items, False, duties, self.tag)
        duties = self._duties(backend, None)
        return backend.submit(run_batch, self.payload, items, True, duties, self.tag)

    def _initializer(self) -> Initializer | None:
        if self.options.initializer is None:
            return None
        return self.options.initializer, tuple(self.options.initargs)

    def _duties(self, backend: Backend, initializer: Initializer | None) -> Duties | None:
        watch = self.timeouts.watch(backend.in_process)
        # A backend whose workers outlive it recycles them its own way (Ray's max_calls).
        limit = self.options.max_tasks_per_child if backend.own_workers else None
        if self.options.initializer is None and watch is None and limit is None:
            return None
        share = None if backend.in_process else self.memory.share
        return Duties(self._run, initializer, limit, watch, self.timeouts.on, share)


def initializer_failed(error: BaseException | TaskException, label: str) -> InitializerFailed:
    """The error that ends a run whose initializer raised ``error`` in a worker of ``label``."""
    exc = error.exc if isinstance(error, TaskException) else error
    if isinstance(error, TaskException):
        exc.__cause__ = RemoteTraceback(error.tb)
    failed = InitializerFailed(
        f"the initializer raised {type(exc).__name__}: {exc} (in a worker of {label}); no task "
        "can run, on this rung or another"
    )
    failed.__cause__ = exc
    return failed
