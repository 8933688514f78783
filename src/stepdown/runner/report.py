"""What a run did: each rung tried, what it finished, why it failed, what ran twice."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..records import field, record

if TYPE_CHECKING:
    from ..planning.plan import Plan

__all__ = ["Report", "RungRecord", "log_plan"]

log = logging.getLogger("stepdown")


@record
class RungRecord:
    """One rung as it was tried."""

    label: str
    backend: str
    workers: int
    started: bool = False
    start_seconds: float = 0.0
    reused: bool = False
    finished: int = 0
    failure: str | None = None
    reason: str | None = None
    requeued: int = 0
    skipped: str | None = None
    wall: float = 0.0
    slots: str | None = None
    renewed: int = 0

    def describe(self) -> str:
        if self.skipped is not None:
            return f"{self.label} skipped ({self.skipped})"
        if not self.started:
            return (
                f"{self.label} could not start ({self.failure})"
                if self.failure
                else (f"{self.label} starting")
            )
        if self.backend == "isolation":
            return f"suspects run alone in fresh processes, {self.finished} finished"
        start = "warm" if self.reused else f"started in {self.start_seconds * 1000:.0f} ms"
        text = f"{self.label} ({start}) finished {self.finished}"
        if self.renewed:
            text += f", renewed {self.renewed} time{'' if self.renewed == 1 else 's'}"
        if self.failure is not None:
            text += f", then failed: {self.failure}; {self.requeued} in flight moved on"
        return text


@record
class Report:
    """The record of one run. ``str(report)`` is one readable paragraph.

    Every count is of ``units``: tasks, or for the joblib backend joblib batches, of which
    ``calls`` counts the calls (``delayed(f)(x)``) submitted.
    """

    tasks: int = 0
    rungs: list[RungRecord] = field(default_factory=list)
    rerun: int = 0
    crashed: list[int] = field(default_factory=list)
    task_errors: int = 0
    timeouts: int = 0
    isolated: int = 0
    wall: float = 0.0
    plan: str | None = None
    units: str = "tasks"
    calls: int | None = None
    task_memory: str | None = None  # "learned 1.0 GiB (largest of 12 batches)", or declared

    @classmethod
    def planned(cls, plan: Plan, tasks: int | None) -> Report:
        """The report of a run about to start: its plan, and the rungs the plan skipped."""
        report = cls(tasks=tasks or 0, plan=f"profile {plan.profile}, {plan.rule.label}")
        for planned in plan.rungs:
            if planned.skipped:
                report.rungs.append(
                    RungRecord(
                        label=planned.rung.label(),
                        backend=planned.rung.backend,
                        workers=0,
                        skipped=planned.reason,
                    )
                )
        return report

    def skip(
        self, label: str, backend: str, reason: str, failure: str | None, asked: int, then: str
    ) -> None:
        """Record (and log) a rung skipped when its turn came: unusable (``failure``) or no
        slots; the run steps down to ``then``."""
        skipped = RungRecord(label, backend, 0, skipped=reason, failure=failure)
        skipped.slots = None if failure else f"asked for {asked}, granted 0"
        self.rungs.append(skipped)
        log.warning("%s skipped: %s; stepping down to %s", label, reason, then)

    @property
    def stepped_down(self) -> bool:
        return any(r.failure is not None or r.skipped is not None for r in self.rungs)

    @property
    def final_rung(self) -> str | None:
        started = [r for r in self.rungs if r.started]
        return started[-1].label if started else None

    def to_dict(self) -> dict[str, Any]:
        import dataclasses  # not on a run's path (records.py)

        return dataclasses.asdict(self)

    def __str__(self) -> str:
        calls = "" if self.calls is None else f" of {self.calls} calls"
        parts = [f"{self.tasks} {self.units}{calls} in {self.wall:.2f} s"]
        if self.plan:
            parts[0] += f" ({self.plan})"
        parts[0] += ": " + "; ".join(r.describe() for r in self.rungs) + "."
        tail = []
        if self.rerun or any(r.failure is not None for r in self.rungs):
            tail.append(f"{self.rerun} ran again after a failure (they were in flight)")
        if self.isolated:
            tail.append(f"{self.isolated} were suspects")
        if self.task_errors:
            tail.append(f"{self.task_errors} raised")
        if self.timeouts:
            tail.append(f"{self.timeouts} ran over task_timeout")
        if self.task_memory and any(r.reason == "out of memory" for r in self.rungs):
            tail.append(f"task memory {self.task_memory}")
        if self.crashed:
            tail.append(
                f"{len(self.crashed)} killed their worker twice (tasks "
                f"{', '.join(map(str, self.crashed[:10]))})"
            )
        if not tail:
            return parts[0]
        text = "; ".join(tail)
        return f"{parts[0]} {text[0].upper()}{text[1:]}."


def log_plan(plan: Plan) -> None:
    """One INFO line for the ladder a run is about to climb, and one for each skipped rung."""
    log.info(
        "plan: profile %s (%s), %s: %s",
        plan.profile,
        plan.profile_source,
        plan.rule.label,
        " → ".join(r.label for r in plan.rungs if not r.skipped),
    )
    for planned in plan.rungs:
        if planned.skipped:
            log.info("plan: %s skipped: %s", planned.rung.label(), planned.reason)
