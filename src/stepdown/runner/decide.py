"""What the runner does about a failed rung, and the watchdog that turns a stall into one.

Every resource failure goes through :func:`decide`; a task's own exception never reaches it.
"""

from __future__ import annotations

import enum
import logging
import time

from ..backends.base import Backend
from ..errors import Reason, ResourceFailure
from ..planning.rung import Rung

__all__ = ["Step", "Watchdog", "decide"]

log = logging.getLogger("stepdown")


class Step(enum.Enum):
    """The next step after a rung failed."""

    RESTART = "restart the rung with a fresh pool"
    STEP_DOWN = "step down to the next rung"


def decide(failure: ResourceFailure, rung: Rung, restarts: int) -> Step:
    """The next step after ``rung`` failed with ``failure``, having restarted ``restarts`` times.

    One dead worker does not prove the machine cannot afford the pool (a passing memory spike,
    a stray kill): a process rung gets a fresh pool ``restarts`` times (rung option, default 1).
    A poison task kills the fresh pool too, and the ladder then goes on. Anything else steps
    down.
    """
    if (
        not rung.in_process
        and failure.reason is Reason.WORKER_DIED
        and restarts < int(rung.options.get("restarts", 1))
    ):
        return Step.RESTART
    return Step.STEP_DOWN


class Watchdog:
    """Dead machinery with work outstanding for longer than ``timeout`` is a failure.

    :meth:`check` is called whenever the runner waited a poll interval without news.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._since: float | None = None
        self._what = ""

    def check(self, backend: Backend, outstanding: bool) -> ResourceFailure | None:
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
