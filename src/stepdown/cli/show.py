"""What ``stepdown plan`` and ``stepdown doctor`` print about the host budget, and the plan's
lines wrapped to :data:`WIDTH` columns so that a reason never runs off a terminal."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Mapping
from typing import Any

from ..budget.budget import Budget
from ..budget.settings import ENV_SWITCH
from ..planning.plan import Plan
from ..planning.setup import Survey
from ..units import format_size, variable

__all__ = ["WIDTH", "budget_line", "budget_status", "plan_dict", "plan_text", "wrap"]

WIDTH = 100

# A gap of two or more spaces between words: where a line's second column starts.
_GAP = re.compile(r"\S {2,}(?=\S)")


def wrap(text: str, width: int = WIDTH) -> str:
    """Each line longer than ``width`` broken between words, its next lines indented to its
    second column (``  machine  2 CPUs ...``: under ``2``), else a little past its own indent."""
    out: list[str] = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        indent = len(line) - len(line.lstrip())
        gap = _GAP.search(line, indent)
        hang = gap.end() if gap is not None and gap.end() <= width // 2 else indent + 4
        out += textwrap.wrap(
            line,
            width,
            subsequent_indent=" " * hang,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(out)


def budget_status(found: Survey, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The host budget's settings and status, with ``enabled`` and ``why``: the budget the run
    uses when it is on, else the one ``STEPDOWN_BUDGET=on`` would give (a report shows what is
    wrong with it, it does not fail on it)."""
    env = os.environ if environ is None else environ
    switch = variable(env, ENV_SWITCH)
    enabled = found.budget is not None
    if switch is not None:
        why = f"{ENV_SWITCH}={switch}"
    else:
        why = f"profile {found.profile.name} {'shares one' if enabled else 'does not share one'}"
    budget = found.budget
    if budget is None:
        try:
            size = found.profile.budget.size or found.resources.cpus.value or 1
            budget = Budget.from_env(size, env)
        except Exception as exc:  # a report names a bad setting instead of stopping on it
            return {"enabled": enabled, "why": why, "error": str(exc)}
    return {**budget.to_dict(), "enabled": enabled, "why": why}


def budget_line(status: Mapping[str, Any]) -> str:
    """``on (profile kaggle shares one): 2 slots at DIR; 0 held; 0 B reserved``, or
    ``off (profile laptop does not share one); STEPDOWN_BUDGET=on would share 2 slots ...``."""
    on = status.get("enabled")
    state = f"on ({status.get('why')}):" if on else f"off ({status.get('why')}); {ENV_SWITCH}=on"
    if status.get("error"):
        return f"{state} {'unusable' if on else 'would fail'}: {status['error']}"
    if status.get("counting") is False:
        return (
            f"{state} {'counts' if on else 'would count'} nothing: no safe place for its files, "
            "so every rung gets the workers it asks for"
        )
    held = status.get("status") or {}
    slots = held.get("slots") or []
    pids = sorted({s.get("pid") for s in slots if s.get("pid") is not None})
    return (
        f"{state} {'' if on else 'would share '}{status.get('size')} slots at "
        f"{status.get('directory')}; {len(slots)} held"
        + (f" by pids {', '.join(map(str, pids))}" if pids else "")
        + f"; {format_size(held.get('reserved_memory', 0))} reserved"
    )


def plan_text(chosen: Plan, budget: Mapping[str, Any]) -> str:
    """The plan's own explanation, the budget it would share, wrapped."""
    return wrap(f"{chosen.explain()}\n  budget   {budget_line(budget)}")


def plan_dict(chosen: Plan, budget: Mapping[str, Any]) -> dict[str, Any]:
    """The plan as data, each rung with the ``label`` the text shows, and the budget."""
    data = chosen.to_dict()
    for planned, rung in zip(chosen.rungs, data["rungs"], strict=True):
        rung.setdefault("label", planned.label)
    return {**data, "budget": dict(budget)}
