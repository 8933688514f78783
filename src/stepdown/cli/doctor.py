"""``stepdown doctor``: what this machine offers, which backends are here, what starting each
kind of pool costs, and the plans it gets."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..backends.registry import BackendInfo, infos
from ..planning.plan import Plan
from ..planning.reading import Reading
from ..planning.resources import Resources
from ..planning.setup import survey
from ..planning.startup import Cost, costs, measure
from ..planning.startup_cache import cache_path
from ..units import format_size
from .show import budget_line, budget_status

__all__ = ["DoctorReport", "doctor"]

_PLAN_SIZES = (1, 4, 64)


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    version: str | None
    install: str | None

    def describe(self) -> str:
        if not self.available:
            return f"{self.name:<11} missing: {self.install}"
        return f"{self.name:<11} {self.version or 'standard library'}"


@dataclass(frozen=True)
class DoctorReport:
    resources: Resources
    backends: tuple[BackendStatus, ...]
    policy_source: str
    profile: str
    profile_source: str
    plans: tuple[Plan, ...]
    ray: Mapping[str, Any] | None
    budget: Mapping[str, Any] | None
    startup: Mapping[str, Cost]
    startup_cache: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "resources": self.resources.to_dict(),
            "backends": [vars(b) for b in self.backends],
            "policy": self.policy_source,
            "profile": {"name": self.profile, "source": self.profile_source},
            "ray": self.ray,
            "budget": self.budget,
            "startup": {
                "cache": self.startup_cache,
                "kinds": {kind: asdict(cost) for kind, cost in self.startup.items()},
            },
            "plans": {str(p.tasks): p.to_dict() for p in self.plans},
        }

    def explain(self) -> str:
        r = self.resources
        lines = ["stepdown doctor", "", "machine"]
        lines.append(_line("CPUs", r.cpus, str))
        lines.append(_line("memory free", r.memory_available, format_size))
        lines.append(_line("memory limit", r.memory_limit, format_size))
        lines.append(_line("pids/threads left", r.tasks_left, str))
        lines.append(_line("/dev/shm free", r.shm_free, format_size))
        lines.append(_line("this process", r.caller_rss, format_size))
        env = r.env
        found = [name for name in ("kaggle", "ci", "container") if getattr(env, name)]
        if env.ray_address:
            found.append(f"RAY_ADDRESS={env.ray_address}")
        lines.append(f"  {'environment':<18} {', '.join(found) or 'nothing special'}")
        if r.cgroup_version is not None:
            lines.append(f"  {'cgroups':<18} v{r.cgroup_version}")
            for controller, path in sorted(r.cgroup_paths.items()):
                lines.append(f"  {'':<18} {controller}: {path}")
        lines += ["", "backends"]
        lines += [f"  {b.describe()}" for b in self.backends]
        if self.ray is not None:
            lines.append(f"  {'':<11} ray cluster: {_ray_line(self.ray)}")
        lines += ["", f"start-up{'':<11} {'start':>8} {'imports':>8}"]
        for kind, cost in self.startup.items():
            lines.append(
                f"  {kind:<17} {_ms(cost.start):>8} {_ms(cost.imports):>8}  [{cost.source}]"
            )
        lines.append(
            f"  cached in {self.startup_cache}; `stepdown doctor --measure` measures again"
        )
        if self.budget is not None:
            lines += ["", "host budget", f"  {budget_line(self.budget)}"]
            if self.budget.get("finding"):
                lines.append(f"  finding: {self.budget['finding']}")
        lines += [
            "",
            "policy",
            f"  {'policy':<8} {self.policy_source}",
            f"  {'profile':<8} {self.profile} ({self.profile_source})",
        ]
        for chosen in self.plans:
            ladder = " → ".join(f"{p.label}" for p in chosen.rungs if not p.skipped)
            skipped = [f"{p.rung.label()} ({p.reason})" for p in chosen.rungs if p.skipped]
            text = f"  {chosen.tasks:>3} tasks: {ladder}   [{chosen.rule.label}]"
            if skipped:
                text += f"; skipped: {'; '.join(skipped)}"
            lines.append(text)
        lines += ["", "Run `stepdown plan --tasks N` for the reasons behind each number."]
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else f"{seconds * 1000:.0f} ms"


def _line(name: str, reading: Reading, fmt: Any) -> str:
    value = "unknown" if reading.value is None else fmt(reading.value)
    return f"  {name:<18} {value:<12} [{reading.source}]"


def _ray_line(status: Mapping[str, Any]) -> str:
    parts = [
        f"{k}={v}" for k, v in status.items() if k not in ("installed", "version") and v is not None
    ]
    return ", ".join(parts) or "not configured"


def _backend(backend: BackendInfo) -> BackendStatus:
    if backend.dependency is None:
        return BackendStatus(backend.name, True, None, None)
    if importlib.util.find_spec(backend.dependency) is None:
        return BackendStatus(backend.name, False, None, backend.install)
    try:
        version: str | None = importlib.metadata.version(backend.distribution or backend.dependency)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return BackendStatus(backend.name, True, version, None)


def _ray_status(resources: Resources) -> Mapping[str, Any] | None:
    if importlib.util.find_spec("ray") is None:
        return None
    from ..backends.ray import ray_status

    status: Mapping[str, Any] = ray_status(resources.env.ray_address)
    return status


def doctor(
    profile: str | None = None,
    policy: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    measure_startup: bool | Sequence[str] | None = None,
) -> DoctorReport:
    """Everything stepdown sees and decides on this machine: one survey (policy, probe,
    profile, budget), planned for 1, 4 and 64 tasks, and the start-up cost of each kind of
    pool as cached: doctor measures nothing unless asked, so it stays fast.

    ``measure_startup`` measures first (a few seconds): ``True`` or an empty sequence the kinds
    measured by default, a sequence of names those kinds (``["ray"]``). Raises ``PolicyError``,
    and ``UsageError`` for an unknown kind.
    """
    startup = costs()
    if measure_startup is not None and measure_startup is not False:
        named = None if isinstance(measure_startup, bool) else list(measure_startup) or None
        startup.update(measure(named, by="stepdown doctor"))
    found = survey(profile, policy)
    return DoctorReport(
        resources=found.resources,
        backends=tuple(_backend(backend) for backend in infos()),
        policy_source=found.policy.source,
        profile=found.profile.name,
        profile_source=found.profile_source,
        plans=tuple(found.plan(n) for n in _PLAN_SIZES),
        ray=_ray_status(found.resources),
        budget=budget_status(found),
        startup=startup,
        startup_cache=cache_path(),
    )
