"""Set up once: what a run needs, made in one place for every caller.

::

    survey(profile, policy)  load the policy ─▶ probe the machine ─▶ choose the profile
                             ─▶ the host budget it asks for ─▶ free memory less what other
                                instances reserved ─▶ how worker processes can start here
    Survey.plan(tasks, ...)  make_plan: pure, so one survey can plan several task counts
    prepare(options, tasks)  survey + plan: the Setup the runner takes

``run``, ``imap``, ``Executor``, the joblib backend, the CLI and the demo all go through
:func:`prepare` (or :func:`plan`); ``stepdown doctor`` surveys once and plans three times.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..backends.registry import info, infos, known
from ..budget.budget import Budget
from ..logs import install_handler
from ..options import Options
from ..records import record, replace
from ..units import format_size
from .launch import Launch, read_launch
from .plan import Plan
from .planner import make_plan
from .policy import Policy, PolicySpec, Profile, choose_profile, load_policy
from .reading import Reading
from .resources import Resources, probe
from .rung import Rung
from .startup import costs

__all__ = ["Setup", "Survey", "plan", "prepare", "survey"]


@record(frozen=True)
class Survey:
    """What a run is planned from, read once: the policy, the profile chosen and why, the
    machine (free memory less what other instances reserved), the host budget (``None``:
    off for this profile), and how worker processes can start in this process."""

    policy: Policy
    profile: Profile
    profile_source: str
    resources: Resources
    budget: Budget | None
    launch: Launch

    def plan(
        self,
        tasks: int | None,
        *,
        ladder: Sequence[Rung] | None = None,
        task_memory: int | None = None,
        max_workers: int | None = None,
        start_method: str | None = None,
        work: float | None = None,
    ) -> Plan:
        """The plan for ``tasks`` tasks on this survey (see :func:`make_plan`); ``work``: what
        one task took in earlier runs (then what pools cost to start here is weighed)."""
        return make_plan(
            self.policy,
            self.profile,
            self.resources,
            tasks,
            profile_source=self.profile_source,
            task_memory=task_memory,
            ladder=ladder,
            max_workers=max_workers,
            start_method=start_method,
            launch=self.launch,
            work=work,
            start_costs=None if work is None else _start_costs(),
        )


@record(frozen=True)
class Setup:
    """What the runner takes: the plan, and the host budget that grants its slots."""

    plan: Plan
    budget: Budget | None

    @property
    def budget_wait(self) -> float:
        """How long a rung may wait for slots of a full budget (0: it steps down at once)."""
        return self.plan.budget.wait_seconds


def survey(
    profile: str | None = None,
    policy: PolicySpec = None,
    environ: Mapping[str, str] | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
) -> Survey:
    """Load the policy, probe the machine (a snapshot up to 1 s old is reused), choose the
    profile, build its host budget, and read how worker processes can start (a script's
    ``__main__`` is read where it is now)."""
    # Every run, plan and executor starts here: from now on its warnings name stepdown.
    install_handler()
    env = os.environ if environ is None else environ
    chosen_policy = load_policy(policy, environ=env, cwd=cwd)
    resources = probe(env, max_age=1.0)
    chosen, why = choose_profile(chosen_policy, profile, environ=env, resources=resources)
    budget = None
    if chosen.budget.switched(env):
        size = chosen.budget.size or resources.cpus.value or 1
        budget = Budget.from_env(size, env)
        resources = _less_reserved(resources, budget.reserved_memory())
    return Survey(chosen_policy, chosen, why, resources, budget, read_launch())


def prepare(
    options: Options,
    tasks: int | None,
    environ: Mapping[str, str] | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    work: float | None = None,
) -> Setup:
    """Survey, then plan ``tasks`` tasks (``None``: unknown) as ``options`` say; ``work``: what
    one task took in earlier runs."""
    found = survey(options.profile, options.policy, environ, cwd=cwd)
    chosen = found.plan(
        tasks,
        ladder=options.rungs,
        task_memory=options.task_bytes,
        max_workers=options.max_workers,
        start_method=options.start_method,
        work=work,
    )
    return Setup(chosen, found.budget)


def plan(
    tasks: int | None = None,
    profile: str | None = None,
    policy: PolicySpec = None,
    ladder: Sequence[str | Mapping[str, Any] | Rung] | str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    task_memory: int | str | None = None,
    max_workers: int | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Plan:
    """Load the policy, probe the machine (a snapshot up to 1 s old is reused) and plan.

    ``ladder`` (e.g. ``["loky:3", "thread:2"]``) replaces the profile's rules; ``max_workers``
    caps every rung; ``task_memory`` (e.g. ``"300MiB"``) declares what one task holds.
    """
    options = Options(
        ladder=ladder,
        profile=profile,
        policy=policy,
        task_memory=task_memory,
        max_workers=max_workers,
    )
    return prepare(options, tasks, environ, cwd=cwd).plan


def _less_reserved(resources: Resources, reserved: int) -> Resources:
    """Free memory less what other instances on this host have reserved for their workers."""
    free = resources.memory_available
    if not reserved or free.value is None:
        return resources
    less = Reading(
        max(0, free.value - reserved),
        f"{free.source}, less {format_size(reserved)} reserved by other instances",
    )
    return replace(resources, memory_available=less)


def _start_costs() -> dict[str, float]:
    """What starting each kind of pool costs this process now: its measured (or default) start,
    plus its imports unless its backend is imported already."""
    found: dict[str, float] = {}
    for kind, cost in costs().items():
        backend = kind if known(kind) else next(i.name for i in infos() if kind in i.start_methods)
        imported = info(backend).module in sys.modules
        found[kind] = cost.start + (0.0 if imported else cost.imports)
    return found
