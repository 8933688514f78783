"""Slots of the host budget for the rung running now.

A slot is one concurrent task on any rung, reserving the task's memory (and a worker process's
own on process rungs); the last rung (sequential) always gets its one slot, so every instance on
the host makes progress.
"""

from __future__ import annotations

from ..budget.budget import Budget
from ..budget.grant import Grant
from ..planning.rung import Rung

__all__ = ["Slots"]


class Slots:
    """Takes and gives back the budget's slots for one rung at a time (none without a budget)."""

    def __init__(self, budget: Budget | None, wait: float) -> None:
        self.budget = budget
        self.wait = wait
        self.grant: Grant | None = None

    def take(self, rung: Rung, workers: int, memory: int) -> int | str:
        """Up to ``workers`` slots reserving ``memory`` each: how many, or why none."""
        if self.budget is None:
            return workers
        self.grant = self.budget.acquire(
            workers,
            memory_per_slot=memory,
            label=rung.label(workers),
            wait=self.wait,
            guaranteed=rung.info.last,
        )
        if self.grant.count:
            return self.grant.count
        self.release()
        status = self.budget.status()
        holders = sorted({s.pid for s in status.held if not s.over_budget and s.pid is not None})
        beyond = sum(1 for s in status.held if s.over_budget)
        return (
            f"host budget full: {status.held_in_budget} of {status.size} worker slots held "
            f"by pids {', '.join(map(str, holders[:8]))}"
            + (f" (and {beyond} beyond it, by instances running sequentially)" if beyond else "")
        )

    @property
    def granted(self) -> str | None:
        """``"asked for 3, granted 2"`` while a grant is held."""
        if self.grant is None:
            return None
        return f"asked for {self.grant.asked}, granted {self.grant.count}"

    def release(self) -> None:
        if self.grant is not None:
            self.grant.release()
            self.grant = None
