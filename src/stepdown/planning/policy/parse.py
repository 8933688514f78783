"""Checking a policy table and building the model from it: one small function per table.

``where`` is the key path (``profiles.kaggle.rules[1].ladder[0]``), ``source`` the file. Every
mistake is a :class:`~stepdown.errors.PolicyError` naming both; nothing else leaves here. The
built-in profiles (``builtin.toml``, beside this module) go through the same checks.
"""

from __future__ import annotations

import importlib.resources
import math
import re
import sys
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any, Literal, cast

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from ...budget.settings import MAX_SLOTS, ON_EXHAUSTED, BudgetSettings
from ...errors import PolicyError
from ...units import parse_fraction, parse_size, shown
from ..rung import Rung, ending_last, parse_rung
from .model import DEFAULT_MEMORY_HEADROOM, ENVIRONMENTS, Conditions, Policy, Profile, Rule

__all__ = [
    "BUILTIN_SOURCE",
    "builtin",
    "builtin_text",
    "describe",
    "parse_document",
    "parse_policy_ladder",
    "parse_policy_rung",
    "profile_names",
]

BUILTIN_SOURCE = "<built-in>"

_TOP_KEYS = ("profile", "profiles")
_PROFILE_KEYS = ("description", "memory_per_worker", "memory_headroom", "rules", "budget")
_RULE_KEYS = ("when", "ladder")
_WHEN_KEYS = ("tasks_below", "tasks_at_least", "min_free_memory", "min_cpus", "env")
_BUDGET_KEYS = ("enabled", "size", "on_exhausted", "wait")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def builtin_text() -> str:
    """The built-in profiles as TOML, word for word as ``docs/policy.md`` shows them."""
    return importlib.resources.files(__package__).joinpath("builtin.toml").read_text("utf-8")


@cache
def builtin() -> Policy:
    """The built-in policy, parsed and checked like a user's file."""
    return parse_document(tomllib.loads(builtin_text()), BUILTIN_SOURCE, "", "built-in")


def profile_names(profiles: Mapping[str, Profile]) -> str:
    """``"auto, kaggle, laptop, ..."``: the names a user may choose from."""
    return ", ".join(["auto", *sorted(profiles)])


def describe(value: object) -> str:
    """What a value is, for a message: ``an integer (3)``, ``a table``, ..."""
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, int):
        return f"an integer ({shown(value)})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({shown(value)})"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    if value is None:
        return "nothing (None)"
    return f"a {type(value).__name__}"


def _table(value: object, source: str, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"expected a table, found {describe(value)}", source, where)
    return value


def _part(key: object) -> str:
    """A key as a part of a key path: itself if it is a short string, else shown."""
    return key if isinstance(key, str) and len(key) <= 40 else shown(key)


def _check_keys(
    table: Mapping[Any, Any], allowed: tuple[str, ...], source: str, where: str
) -> None:
    for key in table:
        if key not in allowed:
            raise PolicyError(
                f"unknown key {shown(key)}; allowed: {', '.join(allowed)}",
                source,
                f"{where}.{_part(key)}" if where else _part(key),
            )


def _int(value: object, minimum: int, source: str, where: str, maximum: int | None = None) -> int:
    expected = f"a whole number >= {minimum}" + (
        f" and <= {maximum}" if maximum is not None else ""
    )
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"expected {expected}, found {describe(value)}", source, where)
    if value < minimum or (maximum is not None and value > maximum):
        raise PolicyError(f"expected {expected}, not {shown(value)}", source, where)
    return value


def _size(value: object, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PolicyError(
            f"expected a size such as '1.5GiB' or a byte count, found {describe(value)}",
            source,
            where,
        )
    try:
        return parse_size(value)
    except (ValueError, OverflowError) as exc:
        raise PolicyError(str(exc), source, where) from None


def parse_document(document: object, source: str, prefix: str, label: str) -> Policy:
    """A policy from a parsed TOML document (or a dict): ``source`` names it in errors,
    ``prefix`` is the key path of the table (``"tool.stepdown."``), ``label`` says where it
    came from. Raises :class:`PolicyError` only."""
    top = _table(document, source, prefix.rstrip("."))
    _check_keys(top, _TOP_KEYS, source, prefix.rstrip("."))
    default = top.get("profile")
    if default is not None and not isinstance(default, str):
        raise PolicyError(
            f"expected a profile name (a string), found {describe(default)}",
            source,
            prefix + "profile",
        )
    raw_profiles = _table(top.get("profiles", {}), source, prefix + "profiles")
    profiles: dict[str, Profile] = {}
    for name, body in raw_profiles.items():
        where = f"{prefix}profiles.{_part(name)}"
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
        profiles[name] = _parse_profile(name, body, source, where, label)
    if default is not None and default != "auto":
        known = {**builtin().profiles, **profiles} if source != BUILTIN_SOURCE else profiles
        if default not in known:
            raise PolicyError(
                f"unknown profile {shown(default)}; known profiles: {profile_names(known)}",
                source,
                prefix + "profile",
            )
    return Policy(MappingProxyType(profiles), default, label)


def _parse_profile(name: str, body: object, source: str, where: str, label: str) -> Profile:
    table = _table(body, source, where)
    _check_keys(table, _PROFILE_KEYS, source, where)
    description = table.get("description", "")
    if not isinstance(description, str):
        raise PolicyError(
            f"expected a string, found {describe(description)}", source, f"{where}.description"
        )
    memory = _memory_per_worker(
        table.get("memory_per_worker", "auto"), source, f"{where}.memory_per_worker"
    )
    headroom = _headroom(table.get("memory_headroom"), source, f"{where}.memory_headroom")
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
        memory_per_worker=memory,
        memory_headroom=headroom,
        budget=budget,
        description=description,
        source=label,
    )


def _memory_per_worker(value: object, source: str, where: str) -> int | Literal["auto"] | None:
    if value == "auto":
        return "auto"
    if value == "none":
        return None
    size = _size(value, source, where)
    if size <= 0:
        raise PolicyError(
            "expected 'auto', 'none' or a size above 0 (write 'none' not to limit workers "
            "by memory)",
            source,
            where,
        )
    return size


def _headroom(value: object, source: str, where: str) -> float:
    if value is None:
        return DEFAULT_MEMORY_HEADROOM
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PolicyError(
            f"expected a fraction such as '15%' or 0.15, found {describe(value)}", source, where
        )
    try:
        return parse_fraction(value)
    except (ValueError, OverflowError) as exc:
        raise PolicyError(str(exc), source, where) from None


def _budget(value: object, source: str, where: str) -> BudgetSettings:
    table = _table(value, source, where)
    _check_keys(table, _BUDGET_KEYS, source, where)
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
        found["size"] = _int(table["size"], 1, source, f"{where}.size", MAX_SLOTS)
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
    table = _table(value, source, where)
    _check_keys(table, _RULE_KEYS, source, where)
    when = _parse_when(table.get("when", {}), source, f"{where}.when")
    if "ladder" not in table:
        raise PolicyError(
            'a rule needs a \'ladder\', e.g. ladder = ["loky:3", "thread:2", "sequential"]',
            source,
            f"{where}.ladder",
        )
    return Rule(when, parse_policy_ladder(table["ladder"], source, f"{where}.ladder"))


def _parse_when(value: object, source: str, where: str) -> Conditions:
    table = _table(value, source, where)
    _check_keys(table, _WHEN_KEYS, source, where)
    found: dict[str, Any] = {}
    if "tasks_below" in table:
        found["tasks_below"] = _int(table["tasks_below"], 1, source, f"{where}.tasks_below")
    if "tasks_at_least" in table:
        found["tasks_at_least"] = _int(
            table["tasks_at_least"], 0, source, f"{where}.tasks_at_least"
        )
    if "min_free_memory" in table:
        found["min_free_memory"] = _size(
            table["min_free_memory"], source, f"{where}.min_free_memory"
        )
    if "min_cpus" in table:
        found["min_cpus"] = _int(table["min_cpus"], 1, source, f"{where}.min_cpus")
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
            extra["fraction"] = _fraction(spec.pop("fraction"), source, f"{where}.fraction")
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


def _fraction(value: object, source: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise PolicyError(
            f"expected a number above 0 and at most 1 (0.5 = half), found {describe(value)}",
            source,
            where,
        )
    return float(value)
