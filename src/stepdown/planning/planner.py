"""Planning: a pure function from (policy, profile, resources, tasks) to a :class:`Plan`.

::

    rules, in order ──first whose `when` holds──▶ its ladder
    each rung ──▶ workers = min(cap, max_workers, tasks, CPUs, memory fits, pids fit) * fraction
                  0 ──▶ kept in the plan, skipped, with the reason
                  same as the usable rung above ──▶ skipped (nothing to step down to)
    start_method = "auto" ──▶ fork where no other thread runs and the caller is small next to
                  free memory, else a fresh interpreter (loky; forkserver for process)
    a process rung whose workers would be fresh interpreters that cannot rebuild ``__main__``
                  ──▶ fork instead (the reason says why), or skipped where there is no fork
    a rule's rung whose start costs more than it would save on the work tasks took in earlier
                  runs ──▶ skipped, with the figures

Every number carries its reason, so ``explain()`` can show each decision. Thread rungs share the
caller's memory: they are limited by memory only when a task's memory is declared. Process rungs
need a worker's own footprint (``memory_per_worker``; ``"auto"`` = the caller's measured RSS)
plus the task's memory. Rungs whose workers run elsewhere (Ray) are limited only by their cap,
the task count and, without a cap, this host's CPUs. What a backend costs (pids a worker, where
its workers run) comes from the backend registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import UsageError
from ..records import replace
from ..units import format_size
from .launch import FRESH_METHODS, Launch
from .plan import Plan, PlannedRung, RuleChoice, percent, plural, worker_memory
from .policy import Policy, Profile
from .resources import Resources
from .rung import Rung, ending_last
from .startup import kind_of

__all__ = ["fork_unsafe", "make_plan"]

_SINGLE_REASON = "1: one task at a time, in the caller"


def make_plan(
    policy: Policy,
    profile: Profile,
    resources: Resources,
    tasks: int | None,
    *,
    profile_source: str = "argument",
    task_memory: int | None = None,
    ladder: Sequence[Rung] | None = None,
    max_workers: int | None = None,
    start_method: str | None = None,
    launch: Launch | None = None,
    work: float | None = None,
    start_costs: Mapping[str, float] | None = None,
) -> Plan:
    """Plan ``tasks`` tasks (``None``: unknown) with ``profile`` on ``resources``.

    ``ladder`` replaces the profile's rules (its memory settings still apply). ``task_memory``
    is what one task holds, in bytes, if declared. ``max_workers`` caps every rung;
    ``start_method`` is every rung's that takes one. ``launch`` says whether workers started
    by a fresh interpreter (forkserver, spawn) can rebuild the caller's ``__main__``; where they
    cannot, process rungs start by fork instead, unless the caller asked for a start method (by
    ``start_method`` or in a ``ladder`` rung): that choice wins, and the reason warns.
    ``work`` is what one task took in earlier runs (seconds), ``start_costs`` what starting
    each kind of pool costs here (:func:`.startup.kind_of` names them): a rule's rung whose
    start costs more than its workers would save on the expected work is skipped, with why.
    Pure: reads nothing but its arguments.
    """
    if tasks is not None and (isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 0):
        raise UsageError(f"tasks must be a whole number >= 0 or None, not {tasks!r}")
    if task_memory is not None and (
        isinstance(task_memory, bool) or not isinstance(task_memory, int) or task_memory < 0
    ):
        raise UsageError(f"task_memory must be a byte count >= 0 or None, not {task_memory!r}")
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise UsageError(f"max_workers must be a whole number >= 1 or None, not {max_workers!r}")
    if ladder is not None:
        if not ladder:
            raise UsageError("ladder: a ladder needs at least one rung")
        rungs = ending_last(ladder)
        rule = RuleChoice(None, "given", "the ladder was an argument")
    else:
        rungs, rule = _first_rule(profile, resources, tasks)
    if start_method is not None:
        rungs = tuple(_with_start_method(r, start_method) for r in rungs)
    planned: list[PlannedRung] = []
    for given in rungs:
        asked = start_method is not None or (ladder is not None and "start_method" in given.options)
        given, auto = _auto(given, launch, resources)
        asked = asked and not auto
        rung, note = _starting_here(given, launch, asked)
        note = "; ".join(n for n in (auto, note) if n)
        if rung is None:
            rung, workers, reason = given, 0, note
        else:
            workers, reason = _resolve(rung, profile, resources, tasks, task_memory, max_workers)
            if note and workers:
                reason = f"{reason}; {note}"
            dear = _cannot_pay(rung, workers, tasks, work, start_costs) if ladder is None else None
            if dear is not None:
                workers, reason = 0, dear
        for i, earlier in enumerate(planned, 1):
            if not rung.info.last and not earlier.skipped and _same(earlier, rung, workers):
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
    return ending_last(()), RuleChoice(None, "none held", "sequential only", tuple(failed))


def _cannot_pay(
    rung: Rung,
    workers: int,
    tasks: int | None,
    work: float | None,
    start_costs: Mapping[str, float] | None,
) -> str | None:
    """Why ``rung`` with ``workers`` does not pay for its start on the expected work, or
    ``None`` (it pays, or nothing is known). One worker is never for speed: it stays."""
    if workers < 2 or rung.info.last or tasks is None or work is None or not start_costs:
        return None
    start = start_costs.get(kind_of(rung.backend, rung.options.get("start_method")))
    total = tasks * work
    saved = total - total / workers
    if start is None or saved > start:
        return None
    return (
        f"expected work {_seconds(total)} ({plural(tasks, 'task')} of {_seconds(work)} in "
        f"earlier runs) would save {_seconds(saved)} on {workers} workers, less than the "
        f"{_seconds(start)} it takes to start"
    )


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1e3:.3g} ms" if value >= 1e-3 else f"{value * 1e6:.3g} µs"


def _with_start_method(rung: Rung, method: str) -> Rung:
    """``rung`` with the start method the caller gave for every rung: where its backend takes
    that method, or its rung says ``auto`` (the caller's choice then replaces auto's)."""
    taken = rung.info.start_methods
    if method in taken or (taken and rung.options.get("start_method") == "auto"):
        return replace(rung, options={**rung.options, "start_method": method})
    return rung


def _auto(rung: Rung, launch: Launch | None, resources: Resources) -> tuple[Rung, str]:
    """A rung with ``start_method = "auto"`` (or a method its backend does not take, given
    for every rung) as it will start here, and the plan's note on it (``""``: as it is).

    Fork is the cheapest start (~25 ms against ~60 ms for forkserver, ~110 ms for loky), and
    safe when the caller runs no other threads (a fork copies the locks they hold) and is small
    next to the memory its forks may still take: at most half of it for every worker's copy,
    the cgroup's limit and, under strict overcommit, the commit limit included. Otherwise the
    workers start as fresh interpreters: the backend's own way (loky), else forkserver (spawn
    where there is none).
    """
    info, method = rung.info, rung.options.get("start_method")
    if (
        method is None
        or info.forks_as is None
        or (method != "auto" and method in info.start_methods)
    ):
        return rung, ""
    others = {k: v for k, v in rung.options.items() if k != "start_method"}
    fork = Rung(info.forks_as, rung.workers, {**others, "start_method": "fork"})
    if info.fresh:
        fresh, name = Rung(rung.backend, rung.workers, others), rung.backend
    else:
        name = "forkserver" if launch is None or "forkserver" in launch.methods else "spawn"
        fresh = Rung(rung.backend, rung.workers, {**others, "start_method": name})
    if method != "auto":
        return (fork, "fork as asked") if method == "fork" else (fresh, f"{name}, as asked")
    likely = [n for n in (rung.workers, resources.cpus.value) if n]  # before memory and pids
    why = fork_unsafe(launch, resources, min(likely, default=1))
    if why is not None:
        return fresh, f"start_method auto: {name}, {why}"
    return fork, f"start_method auto: fork, {_fork_safe(launch, resources)}"


def fork_unsafe(launch: Launch | None, resources: Resources, workers: int) -> str | None:
    """Why ``workers`` forks of this caller are not safe here, or ``None`` (see :func:`_auto`)."""
    if launch is None or "fork" not in launch.methods:
        return "no fork here"
    if launch.threads:
        named = (
            f" ({', '.join(launch.thread_names[:3])})"
            if launch.thread_names
            else " (a native library's, such as a BLAS or OpenMP pool)"
        )
        return (
            f"the caller runs {plural(launch.threads, 'other thread')}{named}: "
            "a fork copies their locks"
        )
    rss, free = resources.caller_rss.value, resources.memory_available.value
    if rss is None or free is None:
        return "the caller's size or the free memory is unknown"
    room, shown = _room(launch, free)
    if workers * rss > room // 2:
        return (
            f"{workers} forks of a {format_size(rss)} caller could take more than half of {shown}"
        )
    return None


def _fork_safe(launch: Launch | None, resources: Resources) -> str:
    rss, free = resources.caller_rss.value or 0, resources.memory_available.value or 0
    return f"no other thread, a {format_size(rss)} caller, {_room(launch, free)[1]}"


def _room(launch: Launch | None, free: int) -> tuple[int, str]:
    """What forks may take: the free memory, and under strict overcommit at most what the
    kernel still lets processes commit; and how the plan shows it."""
    if launch is None or launch.commit_left is None:
        return free, f"{format_size(free)} free"
    room = min(free, launch.commit_left)
    return room, f"{format_size(room)} free or committable (strict overcommit)"


def _starting_here(rung: Rung, launch: Launch | None, asked: bool) -> tuple[Rung | None, str]:
    """The rung with a start method whose workers can rebuild ``__main__`` here (``None``: no
    such method), and what the plan should say about it."""
    if launch is None or launch.fresh_fails is None or "start_method" not in rung.info.options:
        return rung, ""
    if rung.info.fresh:  # loky: cloudpickle ships what __main__ defines, nothing to rebuild
        return rung, ""
    method = rung.options.get("start_method") or launch.default
    if method not in FRESH_METHODS:
        return rung, ""
    why = launch.fresh_fails
    if asked:
        return rung, f"start_method {method} as asked, but its workers will fail here: {why}"
    if "fork" in launch.methods:
        return replace(rung, options={**rung.options, "start_method": "fork"}), (
            f"fork, not {method}: {why}"
        )
    return None, f"its workers would start by {method}, which fails here: {why}"


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
    max_workers: int | None,
) -> tuple[int, str]:
    """A rung's worker count and its reason; 0 with the reason it cannot run."""
    if rung.info.single:
        return 1, _SINGLE_REASON
    # (limit, how it reads when it is a limit, how it reads when it is 0)
    limits: list[tuple[int, str, str]] = []
    if rung.workers is not None:
        limits.append((rung.workers, f"cap {rung.workers}", "cap 0"))
    if max_workers is not None:
        limits.append((max_workers, f"max_workers {max_workers}", ""))
    if tasks is not None:
        limits.append((tasks, plural(tasks, "task"), "no tasks"))
    cpus = resources.cpus.value
    if not rung.info.local:
        if rung.workers is None and max_workers is None:
            n = cpus or 1
            limits.append((n, f"{plural(n, 'CPU')} here (Ray may have more)", ""))
    else:
        if cpus is None:
            limits.append((1, "CPU count unknown, taken as 1", ""))
        else:
            limits.append((cpus, plural(cpus, "CPU"), "no CPUs"))
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
    detail = f"{format_size(per)} {each}, {format_size(free)} free less {percent(headroom)}"
    return (
        fits,
        f"memory fits {fits} ({detail})",
        f"needs {format_size(per)} {each}, {format_size(usable)} usable "
        f"({format_size(free)} free less {percent(headroom)})",
    )


def _pids_limit(rung: Rung, resources: Resources) -> tuple[int, str, str] | None:
    left = resources.tasks_left.value
    cost = rung.info.pids
    if left is None or cost is None:
        return None
    per, fixed = cost
    fits = max(0, (left - fixed) // per)
    return (
        fits,
        f"pids fit {fits} ({per} a worker + {fixed}, {left} left)",
        f"needs {per + fixed} pids or threads, {left} left",
    )
