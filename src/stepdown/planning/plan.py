"""The plan: a ladder with every rung's workers resolved, and the reason for every number.

Pure data, printable (:meth:`Plan.explain`) and JSON-able (:meth:`Plan.to_dict`); made by
:func:`stepdown.planning.planner.make_plan`.
"""

from __future__ import annotations

from typing import Any

from ..budget.settings import BudgetSettings
from ..records import field, record
from ..units import format_size
from . import footprint
from .reading import Reading
from .resources import Resources
from .rung import Rung

__all__ = ["Plan", "PlannedRung", "RuleChoice", "percent", "plural", "worker_memory"]


@record(frozen=True)
class PlannedRung:
    """A rung of the ladder with its resolved worker count (0: skipped) and the reason."""

    rung: Rung
    workers: int
    reason: str

    @property
    def skipped(self) -> bool:
        return self.workers == 0

    @property
    def label(self) -> str:
        """``"loky(3)"``, ``"process(4) start_method=fork"``: the rung as ``explain()`` shows it.

        ``fraction`` is left out: the reason shows it at work.
        """
        base = self.rung.label(self.workers) if self.workers else self.rung.label()
        options = " ".join(
            f"{k}={_option(k, v)}" for k, v in self.rung.options.items() if k != "fraction"
        )
        return f"{base} {options}" if options else base

    def resolved(self) -> Rung:
        """The rung with its worker count filled in (``fraction`` is then spent)."""
        options = {k: v for k, v in self.rung.options.items() if k != "fraction"}
        return Rung(self.rung.backend, self.workers, options)


@record(frozen=True)
class RuleChoice:
    """Which rule gave the ladder. ``index`` is its position in the profile's ``rules``
    (``None``: the ladder was an argument); ``why`` says what held; ``passed_over`` says why
    each rule before it did not. An integration that builds or caps the ladder says so:
    ``given_by`` names what gave a ladder that no rule gave (``"joblib prefer='threads'"``),
    ``capped_by`` what capped every rung (``"joblib n_jobs=4"``).
    """

    index: int | None
    conditions: str
    why: str
    passed_over: tuple[str, ...] = ()
    given_by: str = "ladder argument"
    capped_by: str | None = None

    @property
    def label(self) -> str:
        """``rules[1]``, ``ladder argument``, ``no rule``; then any cap: ``rules[1], joblib
        n_jobs=4``."""
        if self.index is not None:
            text = f"rules[{self.index}]"
        else:
            text = self.given_by if self.conditions == "given" else "no rule"
        return text if self.capped_by is None else f"{text}, {self.capped_by}"


@record(frozen=True)
class Plan:
    """The ladder with every rung's workers resolved, and where every decision came from."""

    profile: str
    profile_source: str
    policy_source: str
    rule: RuleChoice
    tasks: int | None
    rungs: tuple[PlannedRung, ...]
    resources: Resources
    memory_per_worker: int | str | None
    memory_headroom: float
    task_memory: int | None = None
    budget: BudgetSettings = field(default_factory=BudgetSettings)

    def worker_memory(self, rung: Rung) -> int:
        """What one worker of ``rung`` is expected to hold (the host budget reserves it)."""
        return worker_memory(rung, self.memory_per_worker, self.resources, self.task_memory)

    def usable_rungs(self) -> tuple[Rung, ...]:
        """The rungs to climb, in order, with their workers filled in; never empty."""
        return tuple(p.resolved() for p in self.rungs if not p.skipped)

    def explain(self) -> str:
        """The plan as readable text: sources, the rule, the machine, each rung and why."""
        tasks = "unknown number of tasks" if self.tasks is None else plural(self.tasks, "task")
        r = self.resources
        memory = _memory_setting(self.memory_per_worker)
        if self.task_memory is not None:
            memory += f", a task {format_size(self.task_memory)}"
        memory += f"; {percent(self.memory_headroom)} of free memory kept free"
        rule = self.rule
        lines = [
            f"stepdown plan for {tasks}",
            f"  policy   {self.policy_source}",
            f"  profile  {self.profile} ({self.profile_source})",
            f"  rule     {rule.label}, {rule.conditions}"
            + ("" if rule.why == rule.conditions else f": {rule.why}"),
            *(f"           (passed over {text})" for text in rule.passed_over),
            f"  machine  {_reading(r.cpus, 'CPUs', plain=True)}",
            f"           {_reading(r.memory_available, 'free')}",
            f"           {_reading(r.tasks_left, 'pids or threads left', plain=True)}",
            f"           {_reading(r.caller_rss, 'caller RSS')}",
            f"  memory   {memory}",
            "  ladder",
        ]
        width = max(len(p.label) for p in self.rungs)
        for i, p in enumerate(self.rungs, 1):
            text = f"skipped: {p.reason}" if p.skipped else p.reason
            lines.append(f"    {i}. {p.label:<{width}}  {text}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able data."""
        r = self.resources
        return {
            "profile": self.profile,
            "profile_source": self.profile_source,
            "policy_source": self.policy_source,
            "rule": {
                "index": self.rule.index,
                "conditions": self.rule.conditions,
                "why": self.rule.why,
                "passed_over": list(self.rule.passed_over),
            },
            "tasks": self.tasks,
            "task_memory": self.task_memory,
            "memory_per_worker": self.memory_per_worker,
            "memory_headroom": self.memory_headroom,
            "resources": {
                name: {"value": reading.value, "source": reading.source}
                for name, reading in (
                    ("cpus", r.cpus),
                    ("memory_available", r.memory_available),
                    ("tasks_left", r.tasks_left),
                    ("caller_rss", r.caller_rss),
                )
            }
            | {
                "env": {
                    "kaggle": r.env.kaggle,
                    "ci": r.env.ci,
                    "ray_address": r.env.ray_address,
                    "container": r.env.container,
                }
            },
            "rungs": [
                {
                    "label": p.label,
                    "backend": p.rung.backend,
                    "cap": p.rung.workers,
                    "options": dict(p.rung.options),
                    "workers": p.workers,
                    "skipped": p.skipped,
                    "reason": p.reason,
                }
                for p in self.rungs
            ],
        }


def _option(key: str, value: object) -> object:
    """A rung option as a label shows it: a size in units (``2.0GiB``), one word."""
    if key == "memory_per_worker" and isinstance(value, int):
        return format_size(value).replace(" ", "")
    return value


def plural(n: int, word: str) -> str:
    """``"1 task"``, ``"2 tasks"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def percent(fraction: float) -> str:
    """``0.15`` → ``"15%"``."""
    return f"{fraction * 100:.3g}%"


def _reading(reading: Reading, what: str, *, plain: bool = False) -> str:
    if reading.value is None:
        return f"{what} unknown [{reading.source}]"
    value = str(reading.value) if plain else format_size(reading.value)
    return f"{value} {what} [{reading.source}]"


def _memory_setting(setting: int | str | None) -> str:
    if setting == "auto":
        return "a forked worker needs the caller's RSS, a fresh interpreter its own (auto)"
    if isinstance(setting, int):
        return f"a process worker needs {format_size(setting)}"
    return "process workers are not limited by memory"


def worker_memory(
    rung: Rung,
    memory_per_worker: int | str | None,
    resources: Resources,
    task_memory: int | None,
) -> int:
    """What one worker of ``rung`` holds: the task's memory (if declared), plus, on a process
    rung, the worker process's own footprint (``memory_per_worker``; ``auto``: the caller's RSS
    for a forked worker, its own for a fresh interpreter, see :mod:`.footprint`)."""
    per = task_memory or 0
    if not rung.in_process:
        setting = rung.options.get("memory_per_worker", memory_per_worker)
        own = footprint.charge(rung, resources.caller_rss.value) if setting == "auto" else setting
        per += own if isinstance(own, int) else 0
    return per
