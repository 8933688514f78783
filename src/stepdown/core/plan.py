"""Planning: a pure function from (policy, profile, resources, tasks) to a :class:`Plan`.

::

    rules, in order ──first whose `when` holds──▶ its ladder
    each rung ──▶ workers = min(cap, tasks, CPUs, memory fits, pids fit) * fraction
                  0 ──▶ kept in the plan, skipped, with the reason
                  same as the usable rung above ──▶ skipped (nothing to step down to)

Every number carries its reason, so ``explain()`` can show each decision. Thread rungs share the
caller's memory: they are limited by memory only when a task's memory is declared. Process rungs
need a worker's own footprint (``memory_per_worker``; ``"auto"`` = the caller's measured RSS)
plus the task's memory. Ray rungs run where Ray puts them: only their cap, the task count and,
without a cap, this host's CPUs limit them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .policy import (
    Policy,
    Profile,
    choose_profile,
    load_policy,
    parse_policy_ladder,
)
from .resources import Reading, Resources, probe
from .rung import Rung
from .units import format_size, parse_size

if TYPE_CHECKING:
    from .budget import Budget

__all__ = ["PIDS_PER_RUNG", "Plan", "PlannedRung", "RuleChoice", "make_plan", "plan"]

# Pids (threads and processes both count against pids.max and threads-max) a rung needs, as
# (per worker, fixed). A thread worker is one thread. A process worker is its process plus its
# own threads (1-2 for the stdlib, a few for loky): 4, to be safe. The fixed part is the pool's
# manager and queue-feeder threads, plus the forkserver or loky's resource tracker.
PIDS_PER_RUNG: Mapping[str, tuple[int, int]] = {
    "thread": (1, 1),
    "process": (4, 3),
    "loky": (4, 4),
}

_SEQUENTIAL_REASON = "1: one task at a time, in the caller"


@dataclass(frozen=True)
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
        options = " ".join(f"{k}={v}" for k, v in self.rung.options.items() if k != "fraction")
        return f"{base} {options}" if options else base

    def resolved(self) -> Rung:
        """The rung with its worker count filled in (``fraction`` is then spent)."""
        options = {k: v for k, v in self.rung.options.items() if k != "fraction"}
        return Rung(self.rung.backend, self.workers, options)


@dataclass(frozen=True)
class RuleChoice:
    """Which rule gave the ladder. ``index`` is its position in the profile's ``rules``
    (``None``: the ladder was an argument); ``why`` says what held; ``passed_over`` says why
    each rule before it did not.
    """

    index: int | None
    conditions: str
    why: str
    passed_over: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.index is not None:
            return f"rules[{self.index}]"
        return "ladder argument" if self.conditions == "given" else "no rule"


@dataclass(frozen=True)
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
    budget: Mapping[str, Any] = field(default_factory=dict)

    def worker_memory(self, rung: Rung) -> int:
        """What one worker of ``rung`` is expected to hold (the host budget reserves it)."""
        return worker_memory(rung, self.memory_per_worker, self.resources, self.task_memory)

    def usable_rungs(self) -> tuple[Rung, ...]:
        """The rungs to climb, in order, with their workers filled in; never empty."""
        return tuple(p.resolved() for p in self.rungs if not p.skipped)

    def explain(self) -> str:
        """The plan as readable text: sources, the rule, the machine, each rung and why."""
        tasks = "unknown number of tasks" if self.tasks is None else _plural(self.tasks, "task")
        r = self.resources
        memory = _memory_setting(self.memory_per_worker)
        if self.task_memory is not None:
            memory += f", a task {format_size(self.task_memory)}"
        memory += f"; {_percent(self.memory_headroom)} of free memory kept free"
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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def _reading(reading: Reading, what: str, *, plain: bool = False) -> str:
    if reading.value is None:
        return f"{what} unknown [{reading.source}]"
    value = str(reading.value) if plain else format_size(reading.value)
    return f"{value} {what} [{reading.source}]"


def _memory_setting(setting: int | str | None) -> str:
    if setting == "auto":
        return "a process worker needs the caller's RSS (auto)"
    if isinstance(setting, int):
        return f"a process worker needs {format_size(setting)}"
    return "process workers are not limited by memory"


def make_plan(
    policy: Policy,
    profile: Profile,
    resources: Resources,
    tasks: int | None,
    *,
    profile_source: str = "argument",
    task_memory: int | None = None,
    ladder: Sequence[Rung] | None = None,
) -> Plan:
    """Plan ``tasks`` tasks (``None``: unknown) with ``profile`` on ``resources``.

    ``ladder`` replaces the profile's rules (its memory settings still apply). ``task_memory``
    is what one task holds, in bytes, if declared. Pure: reads nothing but its arguments.
    """
    if tasks is not None and (isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 0):
        raise UsageError(f"tasks must be a whole number >= 0 or None, not {tasks!r}")
    if task_memory is not None and (
        isinstance(task_memory, bool) or not isinstance(task_memory, int) or task_memory < 0
    ):
        raise UsageError(f"task_memory must be a byte count >= 0 or None, not {task_memory!r}")
    if ladder is not None:
        rungs = tuple(ladder)
        if not rungs:
            raise UsageError("ladder: a ladder needs at least one rung")
        if rungs[-1].backend != "sequential":
            rungs = (*rungs, Rung("sequential", 1))
        rule = RuleChoice(None, "given", "the ladder was an argument")
    else:
        rungs, rule = _first_rule(profile, resources, tasks)
    planned: list[PlannedRung] = []
    for rung in rungs:
        workers, reason = _resolve(rung, profile, resources, tasks, task_memory)
        for i, earlier in enumerate(planned, 1):
            if (
                rung.backend != "sequential"
                and not earlier.skipped
                and _same(earlier, rung, workers)
            ):
                workers = 0
                same = earlier.rung.label(earlier.workers)
                reason = f"same as rung {i}, {same}: nothing to step down to"
        planned.append(PlannedRung(rung, workers, reason))
    return Plan(
        profile=profile.name,
        profile_source=profile_source,
        policy_source=policy.source,
        rule=rule,
        tasks=tasks,
        rungs=tuple(planned),
        resources=resources,
        memory_per_worker=profile.memory_per_worker,
        memory_headroom=profile.memory_headroom,
        task_memory=task_memory,
        budget=profile.budget,
    )


def _first_rule(
    profile: Profile, resources: Resources, tasks: int | None
) -> tuple[tuple[Rung, ...], RuleChoice]:
    failed: list[str] = []
    for index, rule in enumerate(profile.rules):
        holds, why = rule.when.holds(tasks, resources)
        conditions = rule.when.describe()
        if holds:
            return rule.ladder, RuleChoice(index, conditions, why, tuple(failed))
        failed.append(f"rules[{index}], {conditions}: {why}")
    # The loader makes the last rule of every profile unconditional; a hand-built one may not be.
    return (Rung("sequential", 1),), RuleChoice(None, "none held", "sequential only", tuple(failed))


def _same(earlier: PlannedRung, rung: Rung, workers: int) -> bool:
    """Whether ``rung`` with ``workers`` would be the same pool as ``earlier``."""
    if earlier.rung.backend != rung.backend or earlier.workers != workers:
        return False
    return earlier.resolved() == PlannedRung(rung, workers, "").resolved()


def _resolve(
    rung: Rung,
    profile: Profile,
    resources: Resources,
    tasks: int | None,
    task_memory: int | None,
) -> tuple[int, str]:
    """A rung's worker count and its reason; 0 with the reason it cannot run."""
    if rung.backend == "sequential":
        return 1, _SEQUENTIAL_REASON
    # (limit, how it reads when it is a limit, how it reads when it is 0)
    limits: list[tuple[int, str, str]] = []
    if rung.workers is not None:
        limits.append((rung.workers, f"cap {rung.workers}", "cap 0"))
    if tasks is not None:
        limits.append((tasks, _plural(tasks, "task"), "no tasks"))
    cpus = resources.cpus.value
    if rung.backend == "ray":
        if rung.workers is None:
            n = cpus or 1
            limits.append((n, f"{_plural(n, 'CPU')} here (Ray may have more)", ""))
    else:
        if cpus is None:
            limits.append((1, "CPU count unknown, taken as 1", ""))
        else:
            limits.append((cpus, _plural(cpus, "CPU"), "no CPUs"))
        memory = _memory_limit(rung, profile, resources, task_memory)
        if memory is not None:
            limits.append(memory)
        pids = _pids_limit(rung, resources)
        if pids is not None:
            limits.append(pids)
    if not limits:
        return 1, "1: nothing known limits it, and nothing asks for more"
    n, binding, _ = min(limits, key=lambda limit: limit[0])
    if n <= 0:
        return 0, next(zero for limit, _, zero in limits if limit <= 0)
    others = ", ".join(text for _, text, _ in limits if text is not binding)
    within = f"; within {others}" if others else ""
    fraction = rung.options.get("fraction")
    if isinstance(fraction, float) and fraction < 1:
        scaled = max(1, int(n * fraction))
        return scaled, f"{scaled} = {fraction:g} of {binding}{within}"
    return n, f"{n} = {binding}{within}"


def worker_memory(
    rung: Rung,
    memory_per_worker: int | str | None,
    resources: Resources,
    task_memory: int | None,
) -> int:
    """What one worker of ``rung`` holds: the task's memory (if declared), plus, on a process
    rung, the worker process's own footprint (``memory_per_worker``; ``auto`` = caller's RSS)."""
    per = task_memory or 0
    if not rung.in_process:
        setting = rung.options.get("memory_per_worker", memory_per_worker)
        own = resources.caller_rss.value if setting == "auto" else setting
        per += own if isinstance(own, int) else 0
    return per


def _memory_limit(
    rung: Rung, profile: Profile, resources: Resources, task_memory: int | None
) -> tuple[int, str, str] | None:
    """How many workers memory fits, or ``None`` when memory does not limit this rung."""
    per = worker_memory(rung, profile.memory_per_worker, resources, task_memory)
    if not per:
        return None
    each = "a task" if rung.in_process else "a worker"
    free = resources.memory_available.value
    if free is None:
        return None
    headroom = profile.memory_headroom
    usable = int(free * (1 - headroom))
    fits = usable // per
    detail = f"{format_size(per)} {each}, {format_size(free)} free less {_percent(headroom)}"
    return (
        fits,
        f"memory fits {fits} ({detail})",
        f"needs {format_size(per)} {each}, {format_size(usable)} usable "
        f"({format_size(free)} free less {_percent(headroom)})",
    )


def _pids_limit(rung: Rung, resources: Resources) -> tuple[int, str, str] | None:
    left = resources.tasks_left.value
    cost = PIDS_PER_RUNG.get(rung.backend)
    if left is None or cost is None:
        return None
    per, fixed = cost
    fits = max(0, (left - fixed) // per)
    return (
        fits,
        f"pids fit {fits} ({per} a worker + {fixed}, {left} left)",
        f"needs {per + fixed} pids or threads, {left} left",
    )


def budget_for(
    settings: Mapping[str, Any], resources: Resources, environ: Mapping[str, str]
) -> Budget | None:
    """The host budget a profile's ``budget`` table asks for, or ``None`` when it is off.

    ``STEPDOWN_BUDGET=on|off`` overrides the profile; ``STEPDOWN_HOST_WORKERS`` sets the size,
    else the table's ``size``, else the CPUs this process may use.
    """
    from .budget import Budget

    switch = environ.get("STEPDOWN_BUDGET", "").strip().lower()
    if switch in ("1", "on", "true", "yes"):
        enabled = True
    elif switch in ("0", "off", "false", "no"):
        enabled = False
    elif switch:
        raise UsageError(f"STEPDOWN_BUDGET: expected on or off, not {switch!r}")
    else:
        enabled = bool(settings.get("enabled", False))
    if not enabled:
        return None
    size = int(settings.get("size") or resources.cpus.value or 1)
    return Budget.from_env(size, environ)


def _less_reserved(resources: Resources, reserved: int) -> Resources:
    """Free memory less what other instances on this host have reserved for their workers."""
    free = resources.memory_available
    if not reserved or free.value is None:
        return resources
    less = Reading(
        max(0, free.value - reserved),
        f"{free.source}, less {format_size(reserved)} reserved by other instances",
    )
    return dataclasses.replace(resources, memory_available=less)


def plan(
    tasks: int | None = None,
    profile: str | None = None,
    policy: str | os.PathLike[str] | Mapping[str, Any] | Policy | None = None,
    ladder: Sequence[str | Mapping[str, Any] | Rung] | str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    task_memory: int | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Plan:
    """Load the policy, probe the machine (a snapshot up to 1 s old is reused) and plan.

    ``ladder`` (e.g. ``["loky:3", "thread:2"]``) replaces the profile's rules.
    """
    env = os.environ if environ is None else environ
    chosen_policy = load_policy(policy, environ=env, cwd=cwd)
    resources = probe(env, max_age=1.0)
    chosen, why = choose_profile(chosen_policy, profile, environ=env, resources=resources)
    host_budget = budget_for(chosen.budget, resources, env)
    if host_budget is not None:
        resources = _less_reserved(resources, host_budget.reserved_memory())
    rungs = None
    if ladder is not None:
        specs = [ladder] if isinstance(ladder, (str, Mapping, Rung)) else ladder
        rungs = parse_policy_ladder(specs, "ladder argument", "ladder")
    memory = None
    if task_memory is not None:
        try:
            memory = parse_size(task_memory)
        except (ValueError, OverflowError) as exc:
            raise UsageError(f"task_memory: {exc}") from None
    return make_plan(
        chosen_policy,
        chosen,
        resources,
        tasks,
        profile_source=why,
        task_memory=memory,
        ladder=rungs,
    )
