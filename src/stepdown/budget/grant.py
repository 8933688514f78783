"""A grant: the slots :meth:`Budget.acquire` took, held until released (or collected)."""

from __future__ import annotations

import os
import time
import weakref
from types import TracebackType
from typing import Any

from ..errors import UsageError
from .slots import HOLDINGS, LABEL_MAX, Slot, check_memory, drop, free, write_record

__all__ = ["Grant"]


class Grant:
    """Slots granted by :meth:`Budget.acquire`; a context manager that frees them on exit.

    ``count`` is the number held now. ``over_budget`` marks the one slot a guaranteed acquire
    takes beyond the budget so the instance can make progress. Release as soon as the rung ends
    or steps down; :meth:`release` is idempotent and also runs when the grant is collected.
    In a forked child a grant is inert: only the process that acquired it can give slots back.
    """

    def __init__(
        self,
        slots: list[Slot],
        *,
        asked: int,
        memory_per_slot: int,
        label: str,
        over_budget: bool,
        started: float,
    ) -> None:
        self.asked = asked
        self.over_budget = over_budget
        self._slots = slots
        self._memory = memory_per_slot
        self._label = label
        self._started = started
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, free, slots, self._pid)

    @classmethod
    def unheld(cls, n: int, memory_per_slot: int, label: str) -> Grant:
        """``n`` slots that no file backs: what a budget with no safe place for its files
        grants, so that the run goes on as if there were no budget."""
        slots = [Slot("", "", -1) for _ in range(n)]
        return cls(
            slots,
            asked=n,
            memory_per_slot=memory_per_slot,
            label=label,
            over_budget=False,
            started=time.time(),
        )

    @property
    def count(self) -> int:
        return len(self._slots)

    @property
    def memory_per_slot(self) -> int:
        return self._memory

    @property
    def label(self) -> str:
        return self._label

    @property
    def released(self) -> bool:
        """True once :meth:`release` ran (or the grant was collected)."""
        return not self._finalizer.alive

    @property
    def slots(self) -> tuple[str, ...]:
        """The slot files held, e.g. ``("slot-0", "slot-3")``."""
        return tuple(s.name for s in self._slots)

    def shrink(self, to: int) -> None:
        """Give back all but ``to`` slots (on a step-down to fewer workers)."""
        if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to <= self.count:
            raise UsageError(
                f"a grant of {self.count} slots can shrink to 0..{self.count}, not {to!r}"
            )
        if os.getpid() != self._pid:
            return
        with HOLDINGS.lock:
            while len(self._slots) > to:
                drop(self._slots.pop())

    def update(self, *, memory_per_slot: int | None = None, label: str | None = None) -> None:
        """Rewrite the records: a measured reservation, or the label of the rung now running."""
        if memory_per_slot is not None:
            self._memory = check_memory(memory_per_slot)
        if label is not None:
            self._label = label[:LABEL_MAX]
        if os.getpid() != self._pid:
            return
        with HOLDINGS.lock:
            for slot in self._slots:
                write_record(slot, self._memory, self._label, self._started)

    def release(self) -> None:
        self._finalizer()

    def to_dict(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "count": self.count,
            "over_budget": self.over_budget,
            "memory_per_slot": self._memory,
            "label": self._label,
            "slots": list(self.slots),
        }

    def __enter__(self) -> Grant:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        over = ", over budget" if self.over_budget else ""
        return f"<Grant {self.count} of {self.asked} slot(s){over} label={self._label!r}>"
