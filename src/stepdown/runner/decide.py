"""What the runner does about a failed rung, and the watchdog that turns a stall into one.

Every resource failure goes through :func:`decide`; a task's own exception never reaches it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Hashable

from ..backends.base import Backend
from ..backends.registry import info
from ..errors import Reason, ResourceFailure
from ..planning.launch import read_launch
from ..planning.planner import fork_unsafe
from ..planning.resources import Resources
from ..planning.rung import Rung
from .timeouts import Timeouts

__all__ = ["Renew", "Step", "Watchdog", "decide", "fresh_pool"]

log = logging.getLogger("stepdown")


class Step(enum.Enum):
    """The next step after a rung failed."""

    RESTART = "restart the rung with a fresh pool"
    SHRINK = "restart the rung with fewer workers"
    WAIT = "restart the one-worker rung once one task fits"
    STEP_DOWN = "step down to the next rung"


class Renew(Exception):
    """Ends a rung's run, not failed: the same rung goes on with a fresh executor. The old one
    is shut down in order if ``graceful`` (it is idle), else abandoned."""

    def __init__(self, why: str, graceful: bool = False) -> None:
        super().__init__(why)
        self.graceful = graceful


def decide(
    failure: ResourceFailure, rung: Rung, restarts: int, workers: int = 1, memory: bool = False
) -> Step:
    """The next step after ``rung`` with ``workers`` failed with ``failure``, having restarted
    ``restarts`` times; ``memory``: memory ran out (see :class:`.memory.MemoryCare`).

    A memory failure shrinks before it moves: the same isolated process rung with fewer
    workers, down to one, which (its worker on this host) waits for room and runs again
    (:meth:`.MemoryCare.again`), and only then the next rung (an in-process one runs tasks
    inside the caller, whom the OOM killer would then pick). One dead worker does not prove the
    machine cannot afford the pool (a passing spike, a stray kill): a process rung gets a fresh pool
    ``restarts`` times (rung option, default 1). A poison task kills the fresh pool too, and
    the ladder then goes on. Anything else steps down.
    """
    if rung.in_process:
        return Step.STEP_DOWN
    if memory and workers > 1:
        return Step.SHRINK
    if memory and info(rung.backend).local:  # the guard sees its worker; not Ray's remote ones
        return Step.WAIT
    if failure.reason is Reason.WORKER_DIED and restarts < int(rung.options.get("restarts", 1)):
        return Step.RESTART
    return Step.STEP_DOWN


def fresh_pool(rung: Rung, resources: Resources, workers: int) -> tuple[Rung, str]:
    """The rung the fresh pool after a worker death starts as, and how the log says it: a
    fork-started one where the rung's workers are fresh interpreters (loky, ~200 ms to start
    again) and a fork of the caller is safe now (the test of ``start_method = "auto"``), ~15 ms.
    """
    if not rung.info.fresh or rung.info.forks_as is None:
        return rung, "a fresh pool"
    launch = read_launch()
    for _ in range(5):  # a thread of the broken pool may be ending: its OS thread outlives it
        if launch.threads <= len(launch.thread_names):  # each one named: none is ending
            break
        time.sleep(0.01)
        launch = read_launch()
    why = fork_unsafe(launch, resources, workers)
    if why is not None:
        return rung, f"a fresh pool (not fork-started: {why})"
    forked = Rung(rung.info.forks_as, rung.workers, {**rung.options, "start_method": "fork"})
    return forked, f"a fresh pool, fork-started ({forked.label(workers)})"


class Watchdog:
    """A rung that makes no progress with work outstanding is a failure, so nothing hangs.

    :meth:`check` is called whenever the runner waited a poll interval without news, and at
    least once a poll interval while news comes (a Ray whose GCS died went on returning results
    every few milliseconds, and was never looked at). Two kinds of stall count: machinery that
    stays dead (a manager thread, every worker) for ``timeout``; and worker processes that are
    all alive but none of which has started or ended a batch, or is in a task or the
    initializer, for ``IDLE_FACTOR`` times as long (they may be importing the task's modules or
    receiving its data; a task itself may run as long as it likes, ``task_timeout`` is for
    that).
    """

    IDLE_FACTOR = 10

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._since: float | None = None
        self._what = ""
        self._idle_since: float | None = None
        self._seen: Hashable = None
        self._looked = time.monotonic()

    def due(self, quiet: bool, poll: float) -> bool:
        """Whether to :meth:`check` now: the runner waited ``poll`` seconds without news, or
        the last look was that long ago."""
        now = time.monotonic()
        if quiet or now - self._looked >= poll:
            self._looked = now
            return True
        return False

    def check(
        self, backend: Backend, outstanding: bool, timeouts: Timeouts
    ) -> ResourceFailure | None:
        return self._dead(backend, outstanding) or self._idle(backend, outstanding, timeouts)

    def _dead(self, backend: Backend, outstanding: bool) -> ResourceFailure | None:
        what = backend.health() if outstanding else None
        if what is None:
            self._since = None
            return None
        now = time.monotonic()
        if self._since is None or self._what != what:
            self._since, self._what = now, what
            log.debug("%s: %s; waiting up to %.1f s", backend.label, what, self.timeout)
            return None
        if now - self._since >= self.timeout:
            return ResourceFailure(
                Reason.EXECUTOR_STALLED,
                f"{what} for {now - self._since:.1f} s with tasks outstanding",
            )
        return None

    def _idle(
        self, backend: Backend, outstanding: bool, timeouts: Timeouts
    ) -> ResourceFailure | None:
        pids = backend.worker_pids() if outstanding else []
        working, seen = timeouts.working(pids) if pids else (True, None)
        now = time.monotonic()
        if working or seen != self._seen:
            self._seen = seen
            self._idle_since = None if working else now
            return None
        idle = now - (self._idle_since or now)
        if idle >= self.timeout * self.IDLE_FACTOR:
            return ResourceFailure(
                Reason.EXECUTOR_STALLED,
                f"none of its {len(pids)} live workers has started or finished a task for "
                f"{idle:.1f} s with tasks outstanding",
            )
        return None
