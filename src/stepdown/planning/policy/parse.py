"""Checking a policy table and building the model from it: one small function per table
(:mod:`.values` checks single values, :mod:`.extends` lays a profile over the one it extends).

``where`` is the key path (``profiles.kaggle.rules[1].ladder[0]``), ``source`` the file. Every
mistake is a :class:`~stepdown.errors.PolicyError` naming both; nothing else leaves here. The
built-in profiles (``builtin.toml``, beside this module) go through the same checks.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any, Literal, cast

from ...budget.settings import MAX_SLOTS, ON_EXHAUSTED, BudgetSettings
from ...errors import PolicyError
from ...units import shown
from ..rung import Rung, ending_last, parse_rung
from .extends import lay_over
from .model import ENVIRONMENTS, Conditions, Policy, Profile, Rule
from .values import (
    as_fraction,
    as_headroom,
    as_size,
    as_table,
    as_whole,
    check_keys,
    describe,
    key_part,
)

__all__ = [
    "BUILTIN_SOURCE",
    "builtin",
    "builtin_text",
    "parse_document",
    "parse_policy_ladder",
    "parse_policy_rung",
    "profile_names",
]

BUILTIN_SOURCE = "<built-in>"

_TOP_KEYS = ("profile", "profiles")
_PROFILE_KEYS = (
    "description",
    "memory_per_worker",
    "memory_headroom",
    "rules",
    "budget",
    "extends",
    "when",
)
_RULE_KEYS = ("when", "ladder")
_WHEN_KEYS = ("tasks_below", "tasks_at_least", "min_free_memory", "min_cpus", "env")
_BUDGET_KEYS = ("enabled", "size", "on_exhausted", "wait")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def builtin_text(name: str = "builtin.toml") -> str:
    """The built-in profiles as TOML, word for word as ``docs/policy.md`` shows them (or another
    file beside this module)."""
    try:  # a plain file beside this module: importlib.resources would cost ~7 ms of imports
        with open(os.path.join(os.path.dirname(__file__), name), encoding="utf-8") as f:
            return f.read()
    except OSError:  # installed in a zip
        import importlib.resources

        return importlib.resources.files(__package__).joinpath(name).read_text("utf-8")


@cache
def builtin_document() -> Mapping[str, Any]:
    """``builtin.toml`` as read by a TOML reader. A cold script reads its twin,
    ``builtin.json`` (tests/test_policy.py keeps the two the same): importing the TOML reader
    costs ~5 ms, a tenth of a cold run's start, and a script whose project has no policy of its
    own has nothing else for it to read."""
    document: Mapping[str, Any] = json.loads(builtin_text("builtin.json"))
    return document


@cache
def builtin() -> Policy:
    """The built-in policy, parsed and checked like a user's file."""
    return parse_document(builtin_document(), BUILTIN_SOURCE, "", "built-in")


def profile_names(profiles: Mapping[str, Profile]) -> str:
    """``"auto, kaggle, laptop, ..."``: the names a user may choose from."""
    return ", ".join(["auto", *sorted(profiles)])


def parse_document(document: object, source: str, prefix: str, label: str) -> Policy:
    """A policy from a parsed TOML document (or a dict): ``source`` names it in errors,
    ``prefix`` is the key path of the table (``"tool.stepdown."``), ``label`` says where it
    came from. Raises :class:`PolicyError` only."""
    top = as_table(document, source, prefix.rstrip("."))
    check_keys(top, _TOP_KEYS, source, prefix.rstrip("."))
    default = top.get("profile")
    if default is not None and not isinstance(default, str):
        raise PolicyError(
            f"expected a profile name (a string), found {describe(default)}",
            source,
            prefix + "profile",
        )
    raw_profiles = as_table(top.get("profiles", {}), source, prefix + "profiles")
    own: dict[str, Mapping[Any, Any]] = {}
    for name, body in raw_profiles.items():
        where = f"{prefix}profiles.{key_part(name)}"
        if not isinstance(name, str) or not _PROFILE_NAME.match(name):
            raise PolicyError(
                f"a profile name is letters, digits, '-' and '_', not {shown(name)}",
                source,
                where,
            )
        if name == "auto":
            raise PolicyError(
                "'auto' is reserved: it picks one of the other profiles from the environment",
                source,
                where,
            )
        own[name] = as_table(body, source, where)
    bases = builtin_document()["profiles"] if source != BUILTIN_SOURCE else {}
    parsed = {
        name: _parse_profile(name, table, source, f"{prefix}profiles.{name}", label)
        for name, table in lay_over(own, bases, source, prefix).items()
    }
    profiles = {name: parsed[name] for name in own}  # in the order written: auto tries them so
    if default is not None and default != "auto":
        known = {**builtin().profiles, **profiles} if source != BUILTIN_SOURCE else profiles
        if default not in known:
            raise PolicyError(
                f"unknown profile {shown(default)}; known profiles: {profile_names(known)}",
                source,
                prefix + "profile",
            )
    return Policy(MappingProxyType(profiles), default, label)


def _parse_profile(
    name: str, table: Mapping[Any, Any], source: str, where: str, label: str
) -> Profile:
    check_keys(table, _PROFILE_KEYS, source, where)
    description = table.get("description", "")
    if not isinstance(description, str):
        raise PolicyError(
            f"expected a string, found {describe(description)}", source, f"{where}.description"
        )
    memory = _memory_per_worker(
        table.get("memory_per_worker", "auto"), source, f"{where}.memory_per_worker"
    )
    headroom = as_headroom(table.get("memory_headroom"), source, f"{where}.memory_headroom")
    budget = _budget(table.get("budget", {}), source, f"{where}.budget")
    rules_where = f"{where}.rules"
    if "rules" not in table:
        raise PolicyError(
            "a profile needs 'rules': a list of tables with a 'ladder' (and optional 'when')",
            source,
            rules_where,
        )
    raw_rules = table["rules"]
    if not isinstance(raw_rules, (list, tuple)):
        raise PolicyError(
            f"expected an array of rule tables, found {describe(raw_rules)}", source, rules_where
        )
    if not raw_rules:
        raise PolicyError("a profile needs at least one rule", source, rules_where)
    rules = tuple(
        _parse_rule(raw, source, f"{rules_where}[{i}]") for i, raw in enumerate(raw_rules)
    )
    if not rules[-1].when.always:
        raise PolicyError(
            "the last rule of a profile must have no 'when', so that every situation gets a "
            "ladder; add a last rule with only a 'ladder'",
            source,
            f"{rules_where}[{len(rules) - 1}].when",
        )
    return Profile(
        name=name,
        rules=rules,
        when=_profile_when(table, source, f"{where}.when"),
        memory_per_worker=memory,
        memory_headroom=headroom,
        budget=budget,
        description=description,
        source=label,
    )


def _profile_when(table: Mapping[Any, Any], source: str, where: str) -> Conditions | None:
    """When ``auto`` picks this profile; ``None``: only by its name."""
    if "when" not in table:
        return None
    when = _parse_when(table["when"], source, where)
    if when.tasks_below is not None or when.tasks_at_least is not None:
        raise PolicyError(
            "a profile's 'when' cannot count tasks: the profile is chosen before the task count "
            "is known (put tasks_below or tasks_at_least in a rule's 'when')",
            source,
            where,
        )
    return when


def _memory_per_worker(value: object, source: str, where: str) -> int | Literal["auto"] | None:
    if value == "auto":
        return "auto"
    if value == "none":
        return None
    size = as_size(value, source, where)
    if size <= 0:
        raise PolicyError(
            "expected 'auto', 'none' or a size above 0 (write 'none' not to limit workers "
            "by memory)",
            source,
            where,
        )
    return size


def _budget(value: object, source: str, where: str) -> BudgetSettings:
    table = as_table(value, source, where)
    check_keys(table, _BUDGET_KEYS, source, where)
    found: dict[str, Any] = {}
    if "enabled" in table:
        if not isinstance(table["enabled"], bool):
            raise PolicyError(
                f"expected true or false, found {describe(table['enabled'])}",
                source,
                f"{where}.enabled",
            )
        found["enabled"] = table["enabled"]
    if "size" in table:
        found["size"] = as_whole(table["size"], 1, source, f"{where}.size", MAX_SLOTS)
    if "on_exhausted" in table:
        if table["on_exhausted"] not in ON_EXHAUSTED:
            raise PolicyError(
                f"expected one of {', '.join(map(repr, ON_EXHAUSTED))}, "
                f"found {describe(table['on_exhausted'])}",
                source,
                f"{where}.on_exhausted",
            )
        found["on_exhausted"] = table["on_exhausted"]
    if "wait" in table:
        wait = table["wait"]
        if (
            isinstance(wait, bool)
            or not isinstance(wait, (int, float))
            or not (0 <= wait < math.inf)
        ):
            raise PolicyError(
                f"expected a number of seconds >= 0, found {describe(wait)}",
                source,
                f"{where}.wait",
            )
        found["wait"] = float(wait)
    return BudgetSettings(**found)


def _parse_rule(value: object, source: str, where: str) -> Rule:
    table = as_table(value, source, where)
    check_keys(table, _RULE_KEYS, source, where)
    when = _parse_when(table.get("when", {}), source, f"{where}.when")
    if "ladder" not in table:
        raise PolicyError(
            'a rule needs a \'ladder\', e.g. ladder = ["loky:3", "thread:2", "sequential"]',
            source,
            f"{where}.ladder",
        )
    return Rule(when, parse_policy_ladder(table["ladder"], source, f"{where}.ladder"))


def _parse_when(value: object, source: str, where: str) -> Conditions:
    table = as_table(value, source, where)
    check_keys(table, _WHEN_KEYS, source, where)
    found: dict[str, Any] = {}
    if "tasks_below" in table:
        found["tasks_below"] = as_whole(table["tasks_below"], 1, source, f"{where}.tasks_below")
    if "tasks_at_least" in table:
        found["tasks_at_least"] = as_whole(
            table["tasks_at_least"], 0, source, f"{where}.tasks_at_least"
        )
    if "min_free_memory" in table:
        found["min_free_memory"] = as_size(
            table["min_free_memory"], source, f"{where}.min_free_memory"
        )
    if "min_cpus" in table:
        found["min_cpus"] = as_whole(table["min_cpus"], 1, source, f"{where}.min_cpus")
    if "env" in table:
        found["env"] = _parse_env(table["env"], source, f"{where}.env")
    return Conditions(**found)


def _parse_env(value: object, source: str, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    allowed = ", ".join(map(repr, ENVIRONMENTS))
    if not isinstance(names, (list, tuple)) or not names:
        raise PolicyError(
            f"expected one of {allowed} or a non-empty list of them, found {describe(value)}",
            source,
            where,
        )
    for i, name in enumerate(names):
        if name not in ENVIRONMENTS:
            key = where if isinstance(value, str) else f"{where}[{i}]"
            raise PolicyError(
                f"unknown environment {describe(name)}; expected one of {allowed}", source, key
            )
    return tuple(names)


def parse_policy_ladder(value: object, source: str, where: str) -> tuple[Rung, ...]:
    """A list of rungs (see :func:`parse_policy_rung`), with ``sequential`` appended if it is
    not last. Raises :class:`PolicyError` naming ``source`` and the key path."""
    if not isinstance(value, (list, tuple)):
        raise PolicyError(
            f'expected an array of rungs such as ["loky:3", "sequential"], found {describe(value)}',
            source,
            where,
        )
    if not value:
        raise PolicyError("a ladder needs at least one rung", source, where)
    return ending_last(
        parse_policy_rung(spec, source, f"{where}[{i}]") for i, spec in enumerate(value)
    )


def parse_policy_rung(spec: object, source: str, where: str) -> Rung:
    """:func:`~stepdown.planning.rung.parse_rung`, plus what a policy adds to a rung table.

    ``fraction`` (0 < f <= 1) scales the workers the plan resolves (the server profile's
    half-size rung), and ``memory_per_worker`` is checked and stored as bytes, ``"auto"`` or
    ``"none"``. Raises :class:`PolicyError` with the key path of the mistake.
    """
    extra: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "fraction" in spec:
            extra["fraction"] = as_fraction(spec.pop("fraction"), source, f"{where}.fraction")
        if "memory_per_worker" in spec:
            key = f"{where}.memory_per_worker"
            memory = _memory_per_worker(spec.pop("memory_per_worker"), source, key)
            extra["memory_per_worker"] = "none" if memory is None else memory
    try:
        rung = parse_rung(cast(Any, spec), where)
    except ValueError as exc:  # a UsageError, or an integer too long to print in one
        message = str(exc)
        key = where
        if message.startswith(where):
            key, _, message = message.partition(": ")
        raise PolicyError(message, source, key) from None
    if extra:
        rung = Rung(rung.backend, rung.workers, {**rung.options, **extra})
    return rung
