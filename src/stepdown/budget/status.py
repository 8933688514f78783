"""Who holds which slot of a budget, as read at one moment (``stepdown doctor`` shows it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..records import record

if TYPE_CHECKING:
    from .grant import Grant

__all__ = ["BudgetStatus", "SlotStatus", "grant_line"]

_PIDS_SHOWN = 8


@record(frozen=True)
class SlotStatus:
    """One held slot. ``pid`` is ``None`` when its record is unreadable (held by "unknown")."""

    slot: str
    pid: int | None
    label: str
    memory: int
    started: float | None
    over_budget: bool
    mine: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "pid": self.pid,
            "label": self.label,
            "memory": self.memory,
            "started": self.started,
            "over_budget": self.over_budget,
            "mine": self.mine,
        }


@record(frozen=True)
class BudgetStatus:
    """The held slots of a budget at one moment; free slots are not listed."""

    name: str
    directory: str
    size: int
    held: tuple[SlotStatus, ...]

    @property
    def held_in_budget(self) -> int:
        """Held slots that count against ``size`` (guaranteed slots beyond it do not)."""
        return sum(1 for s in self.held if not s.over_budget)

    @property
    def free(self) -> int:
        return max(0, self.size - self.held_in_budget)

    @property
    def reserved_memory(self) -> int:
        """Memory reserved by every holder, this process included."""
        return sum(s.memory for s in self.held)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(sorted({s.pid for s in self.held if s.pid is not None}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "directory": self.directory,
            "size": self.size,
            "held": self.held_in_budget,
            "free": self.free,
            "over_budget": sum(1 for s in self.held if s.over_budget),
            "reserved_memory": self.reserved_memory,
            "slots": [s.to_dict() for s in self.held],
        }


def grant_line(grant: Grant, holders: dict[str, int | None], size: int) -> str:
    """``"asked for 2 worker slots, granted 1 (2 of 4 held by pids 10, 11)"``: what a pass
    over the slots found, for the log. ``holders``: slot name -> holder pid seen."""
    pids = sorted({pid for pid in holders.values() if pid is not None})
    if grant.over_budget:
        pids = sorted({*pids, os.getpid()})
    listed = ", ".join(map(str, pids[:_PIDS_SHOWN])) + (", ..." if len(pids) > _PIDS_SHOWN else "")
    by = f" by pids {listed}" if pids else ""
    over = " over the budget" if grant.over_budget else ""
    plural = "" if grant.asked == 1 else "s"
    return (
        f"asked for {grant.asked} worker slot{plural}, granted {grant.count}{over} "
        f"({len(holders)} of {size} held{by})"
    )
