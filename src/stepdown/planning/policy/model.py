"""The policy as data: profiles of rules, each rule a condition and a ladder.

Conditions are data, never code: :meth:`Conditions.holds` reads only the task count and the
probed resources, and says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from ...budget.settings import BudgetSettings
from ...records import field, record
from ...units import format_size
from ..rung import Rung

if TYPE_CHECKING:
    from ..resources import Resources

__all__ = [
    "DEFAULT_MEMORY_HEADROOM",
    "ENVIRONMENTS",
    "Conditions",
    "Policy",
    "Profile",
    "Rule",
]

ENVIRONMENTS = ("kaggle", "ci", "ray", "container")

DEFAULT_MEMORY_HEADROOM = 0.15


@record(frozen=True)
class Conditions:
    """A rule's ``when``: every condition given must hold. None given: always holds.

    An unknown task count counts as many (``tasks_below`` fails, ``tasks_at_least`` holds);
    an unknown CPU count or free memory fails ``min_cpus`` / ``min_free_memory``.
    """

    tasks_below: int | None = None
    tasks_at_least: int | None = None
    min_free_memory: int | None = None
    min_cpus: int | None = None
    env: tuple[str, ...] = ()

    @property
    def always(self) -> bool:
        return self == _ALWAYS

    def describe(self) -> str:
        """``"tasks_below = 4, env = kaggle"``, or ``"always"``."""
        parts = []
        if self.tasks_below is not None:
            parts.append(f"tasks_below = {self.tasks_below}")
        if self.tasks_at_least is not None:
            parts.append(f"tasks_at_least = {self.tasks_at_least}")
        if self.min_free_memory is not None:
            parts.append(f"min_free_memory = {format_size(self.min_free_memory)}")
        if self.min_cpus is not None:
            parts.append(f"min_cpus = {self.min_cpus}")
        if self.env:
            parts.append(f"env = {' or '.join(self.env)}")
        return ", ".join(parts) or "always"

    def holds(self, tasks: int | None, resources: Resources) -> tuple[bool, str]:
        """Whether every condition holds, and why (the first that fails, or all that hold)."""
        why: list[str] = []
        if self.tasks_below is not None:
            if tasks is None:
                return False, f"task count unknown, taken as not below {self.tasks_below}"
            if tasks >= self.tasks_below:
                return False, f"{tasks} tasks, not below {self.tasks_below}"
            why.append(f"{tasks} tasks < {self.tasks_below}")
        if self.tasks_at_least is not None:
            if tasks is None:
                why.append(f"task count unknown, taken as at least {self.tasks_at_least}")
            elif tasks < self.tasks_at_least:
                return False, f"{tasks} tasks, fewer than {self.tasks_at_least}"
            else:
                why.append(f"{tasks} tasks >= {self.tasks_at_least}")
        if self.min_free_memory is not None:
            free = resources.memory_available.value
            need = format_size(self.min_free_memory)
            if free is None:
                return False, f"free memory unknown, taken as below {need}"
            if free < self.min_free_memory:
                return False, f"{format_size(free)} free, below {need}"
            why.append(f"{format_size(free)} free >= {need}")
        if self.min_cpus is not None:
            cpus = resources.cpus.value
            if cpus is None:
                return False, f"CPU count unknown, taken as below {self.min_cpus}"
            if cpus < self.min_cpus:
                return False, f"{cpus} CPUs, fewer than {self.min_cpus}"
            why.append(f"{cpus} CPUs >= {self.min_cpus}")
        if self.env:
            found = [name for name in self.env if _in_environment(name, resources)]
            if not found:
                return False, f"not in {' or '.join(self.env)}"
            why.append(f"in {found[0]}")
        return True, "; ".join(why) or "always"


_ALWAYS = Conditions()


def _in_environment(name: str, resources: Resources) -> bool:
    env = resources.env
    found = {
        "kaggle": env.kaggle,
        "ci": env.ci,
        "ray": env.ray_address is not None,
        "container": env.container,
    }
    return found[name]


@record(frozen=True)
class Rule:
    """When ``when`` holds, climb ``ladder`` (which always ends with ``sequential``)."""

    when: Conditions
    ladder: tuple[Rung, ...]


@record(frozen=True)
class Profile:
    """A named policy: rules (first match wins; the last always matches) and memory settings.

    ``memory_per_worker`` is bytes, ``"auto"`` (the caller's measured footprint), or ``None``
    (do not limit workers by memory). ``budget`` says whether and how it shares a host budget.
    ``when`` says when ``auto`` picks it (``None``: only by its name).
    """

    name: str
    rules: tuple[Rule, ...]
    when: Conditions | None = None
    memory_per_worker: int | Literal["auto"] | None = "auto"
    memory_headroom: float = DEFAULT_MEMORY_HEADROOM
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    description: str = ""
    source: str = "built-in"


@record(frozen=True)
class Policy:
    """All profiles (built-in ones with the user's laid over them) and where they came from.

    ``default_profile`` is the policy's top-level ``profile`` key, if it had one.
    """

    profiles: Mapping[str, Profile]
    default_profile: str | None
    source: str
