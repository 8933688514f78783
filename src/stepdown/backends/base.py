"""The backend interface: one executor for one rung, and its lifecycle.

A backend owns one executor for one rung. Its lifecycle::

    Backend(workers, options) ──start()──▶ running ──submit()*──▶ ...
                                   │                     │
                                   │ raises              │ future fails / health() says dead
                                   ▼                     ▼
                            ResourceFailure        abandon()  (kill workers, never reused)
                                                   shutdown() (idle, orderly; idempotent)

Tasks never run bare: the runner submits :func:`stepdown.runner.batch.run_batch`, which returns
each task's exception as a value. So whatever a backend's future raises, or ``submit`` raises,
is a failure of the executor itself, and the runner translates it at one boundary,
:func:`stepdown.backends.failures.translate`. What stepdown knows of a backend before importing
it (its module, options, dependency, ...) is in :mod:`stepdown.backends.registry`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, ClassVar

from .registry import info

__all__ = ["Backend"]


class Backend(abc.ABC):
    """One executor for one rung.

    ``name`` is the backend's registry entry, which holds the facts about it (``in_process``
    among them: tasks of threads and sequential share the caller's memory, and a task that kills
    its process kills the caller). ``synchronous`` backends run a call inside ``submit``.
    """

    name: ClassVar[str]
    synchronous: ClassVar[bool] = False
    # Whether a fresh backend of this rung has fresh worker processes, so that a worker which
    # has run max_tasks_per_child tasks can decline work and be replaced by renewing the rung.
    own_workers: ClassVar[bool] = True

    def __init__(self, workers: int, options: Mapping[str, Any] | None = None) -> None:
        self.workers = workers
        self.options: Mapping[str, Any] = options or {}
        self.closed = False
        # Set when the executor broke although the future it returned is still good (a thread
        # pool that could not add a thread after one took the call): the runner steps down.
        self.broken: BaseException | None = None
        # How long dead machinery may hold work before it is a failure (the run's setting).
        self.stall_timeout = 3.0
        # The run's task_timeout: an in-process backend then runs calls where the caller's
        # thread can stop waiting for them (set before the first submit).
        self.task_timeout: float | None = None
        self.max_tasks_per_child: int | None = None

    @property
    def in_process(self) -> bool:
        return info(self.name).in_process

    @property
    def label(self) -> str:
        return self.name if info(self.name).single else f"{self.name}({self.workers})"

    @abc.abstractmethod
    def start(self) -> None:
        """Create the executor and its workers. Raises what the OS said (ENOMEM, EAGAIN, ...).

        Backends start their workers here, not lazily on the first submit, so that a pool that
        cannot start fails before any task is handed to it.
        """

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Schedule ``fn(*args)``; ``fn`` and ``args`` are picklable for process backends.

        May raise (a thread that cannot start, a broken pool); the future may fail with the
        executor's own exception. Neither is ever the task's exception.
        """

    def health(self) -> str | None:
        """``None`` while the machinery can make progress, else what is dead.

        The runner's watchdog calls this while it waits; a machinery that stays dead with tasks
        outstanding for the stall timeout is a resource failure, so nothing hangs.
        """
        return None

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes (empty for in-process backends)."""
        return []

    def dead_worker_exitcode(self) -> int | None:
        """The exit code of a worker that died on its own (``-9``: SIGKILL), if one did.

        Called before :meth:`abandon`, which kills the rest.
        """
        return None

    @abc.abstractmethod
    def abandon(self) -> None:
        """Give up on a broken executor: kill its workers, cancel what is queued, never join.

        Safe from any thread except the executor's own callback threads; idempotent.
        """

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Orderly shutdown of an idle executor, waiting for its workers. Idempotent."""

    def let_go(self) -> None:
        """The interpreter is ending: shut an idle executor down without waiting on its
        workers' own exit where that is slow. The default is :meth:`shutdown`."""
        self.shutdown()

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.shutdown()
        else:
            self.abandon()
