"""The policy: which ladder to climb, as data read from TOML (a policy file is never executed).

Where the policy comes from, first found wins::

    argument ─▶ $STEPDOWN_POLICY ─▶ ./stepdown.toml ─▶ ./pyproject.toml [tool.stepdown] ─▶ built-in

Which profile, first found wins::

    argument ─▶ $STEPDOWN_PROFILE ─▶ the policy's top-level ``profile`` ─▶ "auto"

A user's profiles are laid over the built-in ones by name (a user's ``kaggle`` replaces the
built-in ``kaggle`` whole). Every mistake is a :class:`PolicyError` naming the source and the key
path; nothing else leaves the loader. The format is documented in ``docs/policy.md``.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from .errors import PolicyError
from .rung import Rung, parse_rung
from .units import format_size, parse_fraction, parse_size

if TYPE_CHECKING:
    from .resources import Resources

__all__ = [
    "BUILTIN_POLICY",
    "ENVIRONMENTS",
    "Conditions",
    "Policy",
    "Profile",
    "Rule",
    "choose_profile",
    "load_policy",
    "parse_policy_ladder",
    "parse_policy_rung",
]

# The built-in profiles, parsed by the same loader as a user's file (so they are validated the
# same way) and documented word for word in docs/policy.md.
BUILTIN_POLICY = """\
# Which process backend each profile uses is a decision recorded here. Cold start, from a fresh
# interpreter to the first result:
#
#   process, fork         ~25 ms  cheapest. The child is a copy of the caller: in a memory-capped
#                                 container a big caller's fork fails with ENOMEM, and a caller
#                                 that runs threads hands its children copies of held locks.
#   process, forkserver   ~60 ms  children fork from a small single-threaded server: the caller's
#                                 size and threads do not matter.
#   loky                 ~110 ms  fork+exec: as immune to the caller's size as forkserver, and an
#                                 executor that names dead workers instead of hanging.
#
# laptop: fork. Short interactive jobs, where start-up is most of the job; memory rarely capped.
# kaggle: loky. Memory-capped notebook containers with big parents: ENOMEM at fork is the failure
#         this project started from.
# server: forkserver. Long-lived, often multi-threaded callers and many workers: 60 ms is small
#         next to a job that fills 16 or more CPUs.
# ray:    Ray, then loky (a Ray node is usually a container too).
#
# Fewer than 4 tasks do not pay for a process pool's start-up: such jobs run on threads.

[profiles.laptop]
description = "a workstation: fork-started processes, threads for tiny jobs"
memory_per_worker = "auto"
memory_headroom = "15%"

[[profiles.laptop.rules]]
when = { tasks_below = 4 }
ladder = ["thread:auto", "sequential"]

[[profiles.laptop.rules]]
ladder = [{ backend = "process", start_method = "fork" }, "thread:auto", "sequential"]

[profiles.kaggle]
description = "a memory-capped notebook container: loky with 3 workers, threads for tiny jobs"
memory_per_worker = "auto"
memory_headroom = "25%"

[[profiles.kaggle.rules]]
when = { tasks_below = 4 }
ladder = ["thread:3", "sequential"]

[[profiles.kaggle.rules]]
ladder = ["loky:3", "thread:2", "sequential"]

[profiles.kaggle.budget]         # several notebooks or jobs in one container share the CPUs
enabled = true

[profiles.server]
description = "a big host: every CPU, then half of them, in forkserver-started processes"
memory_per_worker = "auto"
memory_headroom = "15%"

[[profiles.server.rules]]
when = { tasks_below = 4 }
ladder = ["thread:auto", "sequential"]

[[profiles.server.rules]]
ladder = [
    { backend = "process", start_method = "forkserver" },
    { backend = "process", start_method = "forkserver", fraction = 0.5 },
    "thread:auto",
    "sequential",
]

[profiles.server.budget]         # jobs of several users or instances share one host
enabled = true

[profiles.ray]
description = "a Ray cluster: Ray tasks, then loky on this node"
memory_per_worker = "auto"
memory_headroom = "15%"

[[profiles.ray.rules]]
ladder = ["ray", "loky:auto", "thread:auto", "sequential"]
"""

BUILTIN_SOURCE = "<built-in>"

# What `auto` picks, checked in this order: Ray, Kaggle, a big host, else a laptop.
AUTO_SERVER_MIN_CPUS = 16

ENVIRONMENTS = ("kaggle", "ci", "ray", "container")

DEFAULT_MEMORY_HEADROOM = 0.15

_TOP_KEYS = ("profile", "profiles")
_PROFILE_KEYS = ("description", "memory_per_worker", "memory_headroom", "rules", "budget")
_RULE_KEYS = ("when", "ladder")
_WHEN_KEYS = ("tasks_below", "tasks_at_least", "min_free_memory", "min_cpus", "env")
_BUDGET_KEYS = ("enabled", "size", "on_exhausted", "wait")
_ON_EXHAUSTED = ("step-down", "wait")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
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
    if name == "kaggle":
        return env.kaggle
    if name == "ci":
        return env.ci
    if name == "ray":
        return env.ray_address is not None
    return env.container


@dataclass(frozen=True)
class Rule:
    """When ``when`` holds, climb ``ladder`` (which always ends with ``sequential``)."""

    when: Conditions
    ladder: tuple[Rung, ...]


@dataclass(frozen=True)
class Profile:
    """A named policy: rules (first match wins; the last always matches) and memory settings.

    ``memory_per_worker`` is bytes, ``"auto"`` (the caller's measured footprint), or ``None``
    (do not limit workers by memory). ``budget`` is kept raw for the host budget.
    """

    name: str
    rules: tuple[Rule, ...]
    memory_per_worker: int | Literal["auto"] | None = "auto"
    memory_headroom: float = DEFAULT_MEMORY_HEADROOM
    budget: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""
    source: str = "built-in"


@dataclass(frozen=True)
class Policy:
    """All profiles (built-in ones with the user's laid over them) and where they came from.

    ``default_profile`` is the policy's top-level ``profile`` key, if it had one.
    """

    profiles: Mapping[str, Profile]
    default_profile: str | None
    source: str


# --------------------------------------------------------------------------------------------
# Loading


def load_policy(
    policy: str | os.PathLike[str] | Mapping[str, Any] | Policy | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Policy:
    """The policy from ``policy`` (a path, a table, a :class:`Policy`), else from the places
    in the module docstring, in that order. Raises :class:`PolicyError` only."""
    if isinstance(policy, Policy):
        return policy
    env = os.environ if environ is None else environ
    base = _working_directory(cwd)
    if isinstance(policy, Mapping):
        return _merge(_parse_table(policy, "<dict>", "", "argument (dict)"))
    if isinstance(policy, (str, os.PathLike)):
        path = _absolute(base, policy)
        return _merge(_load_file(path, "", f"argument ({path})"))
    if policy is not None:
        raise PolicyError(
            "a policy is a path to a TOML file, a table (dict) or a Policy, "
            f"not {type(policy).__name__}",
            source="argument",
        )
    from_env = env.get("STEPDOWN_POLICY")
    if from_env:
        path = _absolute(base, from_env)
        return _merge(_load_file(path, "", f"STEPDOWN_POLICY ({path})"))
    if base is None:  # the working directory was deleted: it holds no policy
        return _builtin()
    local = base / "stepdown.toml"
    if local.is_file():
        path = str(local.absolute())
        return _merge(_load_file(path, "", f"stepdown.toml ({path})"))
    pyproject = base / "pyproject.toml"
    if pyproject.is_file():
        path = str(pyproject.absolute())
        found = _load_file(path, "tool.stepdown", f"pyproject.toml [tool.stepdown] ({path})")
        if found is not None:
            return _merge(found)
    return _builtin()


def _working_directory(cwd: str | os.PathLike[str] | None) -> Path | None:
    try:
        return Path(cwd if cwd is not None else os.getcwd()).absolute()
    except OSError:
        return None


def _absolute(base: Path | None, path: str | os.PathLike[str]) -> str:
    given = Path(os.fspath(path))
    if base is None and not given.is_absolute():
        raise PolicyError("a relative path, and the working directory is gone", str(given))
    return str(given if base is None else base / given)


# Parsed files by (path, section, source label, content): a file is read on every call (cheap)
# but parsed and validated again only when its bytes change.
_FILE_CACHE: dict[tuple[str, str, str, bytes], Policy | None] = {}
_FILE_CACHE_SIZE = 32


def _load_file(path: str, section: str, label: str) -> Policy | None:
    """Parse one TOML file; ``section`` (``"tool.stepdown"``) selects a table in it, and its
    absence gives ``None``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(f"cannot read the policy file: {message}", path) from None
    key = (path, section, label, data)
    if key in _FILE_CACHE:
        return _FILE_CACHE[key]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"not UTF-8 text (byte {exc.start}); TOML files are UTF-8", path
        ) from None
    try:
        document: Mapping[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"not valid TOML: {exc}", path) from None
    table: Any = document
    prefix = ""
    if section:
        for part in section.split("."):
            if not isinstance(table, Mapping) or part not in table:
                table = None
                break
            table = table[part]
        prefix = section + "."
    result = None if table is None else _parse_table(table, path, prefix, label)
    if len(_FILE_CACHE) >= _FILE_CACHE_SIZE:
        _FILE_CACHE.clear()
    _FILE_CACHE[key] = result
    return result


@cache
def _builtin() -> Policy:
    return _parse_table(tomllib.loads(BUILTIN_POLICY), BUILTIN_SOURCE, "", "built-in")


def _merge(user: Policy | None) -> Policy:
    builtin = _builtin()
    if user is None:
        return builtin
    profiles = MappingProxyType({**builtin.profiles, **user.profiles})
    return Policy(profiles, user.default_profile, user.source)


def _names(profiles: Mapping[str, Profile]) -> str:
    return ", ".join(["auto", *sorted(profiles)])


# --------------------------------------------------------------------------------------------
# Validation: one small function per table; `where` is the key path, `source` the file.


def _show(value: object) -> str:
    """``repr`` for messages: short, and safe for an integer too long to print."""
    try:
        text = repr(value)
    except ValueError:
        return "(too long to show)"
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, int):
        return f"an integer ({_show(value)})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    if value is None:
        return "nothing (None)"
    return f"a {type(value).__name__}"


def _table(value: object, source: str, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"expected a table, found {_describe(value)}", source, where)
    return value


def _check_keys(
    table: Mapping[Any, Any], allowed: tuple[str, ...], source: str, where: str
) -> None:
    for key in table:
        if key not in allowed:
            raise PolicyError(
                f"unknown key {_show(key)}; allowed: {', '.join(allowed)}",
                source,
                f"{where}.{key}" if where else str(key),
            )


def _int(value: object, minimum: int, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(
            f"expected a whole number >= {minimum}, found {_describe(value)}", source, where
        )
    if value < minimum:
        raise PolicyError(
            f"expected a whole number >= {minimum}, not {_show(value)}", source, where
        )
    return value


def _size(value: object, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PolicyError(
            f"expected a size such as '1.5GiB' or a byte count, found {_describe(value)}",
            source,
            where,
        )
    try:
        return parse_size(value)
    except (ValueError, OverflowError) as exc:
        raise PolicyError(str(exc), source, where) from None


def _parse_table(document: object, source: str, prefix: str, label: str) -> Policy:
    top = _table(document, source, prefix.rstrip("."))
    _check_keys(top, _TOP_KEYS, source, prefix.rstrip("."))
    default = top.get("profile")
    if default is not None and not isinstance(default, str):
        raise PolicyError(
            f"expected a profile name (a string), found {_describe(default)}",
            source,
            prefix + "profile",
        )
    raw_profiles = _table(top.get("profiles", {}), source, prefix + "profiles")
    profiles: dict[str, Profile] = {}
    for name, body in raw_profiles.items():
        where = f"{prefix}profiles.{name}"
        if not isinstance(name, str) or not _PROFILE_NAME.match(name):
            raise PolicyError(
                f"a profile name is letters, digits, '-' and '_', not {_show(name)}",
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
        known = {**_builtin().profiles, **profiles} if source != BUILTIN_SOURCE else profiles
        if default not in known:
            raise PolicyError(
                f"unknown profile {default!r}; known profiles: {_names(known)}",
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
            f"expected a string, found {_describe(description)}", source, f"{where}.description"
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
            f"expected an array of rule tables, found {_describe(raw_rules)}", source, rules_where
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
            f"expected a fraction such as '15%' or 0.15, found {_describe(value)}", source, where
        )
    try:
        return parse_fraction(value)
    except (ValueError, OverflowError) as exc:
        raise PolicyError(str(exc), source, where) from None


def _budget(value: object, source: str, where: str) -> Mapping[str, Any]:
    table = _table(value, source, where)
    _check_keys(table, _BUDGET_KEYS, source, where)
    if "enabled" in table and not isinstance(table["enabled"], bool):
        raise PolicyError(
            f"expected true or false, found {_describe(table['enabled'])}",
            source,
            f"{where}.enabled",
        )
    if "size" in table:
        _int(table["size"], 1, source, f"{where}.size")
    if "on_exhausted" in table and table["on_exhausted"] not in _ON_EXHAUSTED:
        raise PolicyError(
            f"expected one of {', '.join(map(repr, _ON_EXHAUSTED))}, "
            f"found {_describe(table['on_exhausted'])}",
            source,
            f"{where}.on_exhausted",
        )
    if "wait" in table:
        wait = table["wait"]
        if (
            isinstance(wait, bool)
            or not isinstance(wait, (int, float))
            or not (0 <= wait < math.inf)
        ):
            raise PolicyError(
                f"expected a number of seconds >= 0, found {_describe(wait)}",
                source,
                f"{where}.wait",
            )
    return MappingProxyType(dict(table))


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
            f"expected one of {allowed} or a non-empty list of them, found {_describe(value)}",
            source,
            where,
        )
    for i, name in enumerate(names):
        if name not in ENVIRONMENTS:
            key = where if isinstance(value, str) else f"{where}[{i}]"
            raise PolicyError(
                f"unknown environment {_describe(name)}; expected one of {allowed}", source, key
            )
    return tuple(names)


def parse_policy_ladder(value: object, source: str, where: str) -> tuple[Rung, ...]:
    """A list of rungs (see :func:`parse_policy_rung`), with ``sequential`` appended if it is
    not last. Raises :class:`PolicyError` naming ``source`` and the key path."""
    if not isinstance(value, (list, tuple)):
        raise PolicyError(
            f'expected an array of rungs such as ["loky:3", "sequential"], '
            f"found {_describe(value)}",
            source,
            where,
        )
    if not value:
        raise PolicyError("a ladder needs at least one rung", source, where)
    rungs = [parse_policy_rung(spec, source, f"{where}[{i}]") for i, spec in enumerate(value)]
    if rungs[-1].backend != "sequential":
        rungs.append(Rung("sequential", 1))
    return tuple(rungs)


def parse_policy_rung(spec: object, source: str, where: str) -> Rung:
    """:func:`~stepdown.core.rung.parse_rung`, plus what a policy adds to a rung table.

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
            f"expected a number above 0 and at most 1 (0.5 = half), found {_describe(value)}",
            source,
            where,
        )
    return float(value)


# --------------------------------------------------------------------------------------------
# Choosing a profile


def choose_profile(
    policy: Policy,
    profile: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    resources: Resources | None = None,
) -> tuple[Profile, str]:
    """The profile to use, and where that choice came from (``"STEPDOWN_PROFILE"``,
    ``"auto: KAGGLE_KERNEL_RUN_TYPE is set"``, ...). ``auto`` reads ``resources`` (probed when
    not given). Raises :class:`PolicyError` for an unknown name."""
    env = os.environ if environ is None else environ
    if profile is not None:
        name, origin = profile, "argument"
    elif env.get("STEPDOWN_PROFILE"):
        name, origin = env["STEPDOWN_PROFILE"], "STEPDOWN_PROFILE"
    elif policy.default_profile is not None:
        name, origin = policy.default_profile, f"'profile' in {policy.source}"
    else:
        name, origin = "auto", "built-in"
    if not isinstance(name, str):
        raise PolicyError(f"a profile is a name, not {_describe(name)}", origin)
    if name == "auto":
        if resources is None:
            from .resources import probe

            resources = probe(env, max_age=1.0)
        name, why = _auto(resources, env)
        origin = f"auto: {why}" if origin == "built-in" else f"{origin} = auto; {why}"
    if name not in policy.profiles:
        raise PolicyError(
            f"unknown profile {name!r}; known profiles: {_names(policy.profiles)}", origin
        )
    return policy.profiles[name], origin


def _auto(resources: Resources, environ: Mapping[str, str]) -> tuple[str, str]:
    """Ray, then Kaggle, then a big host, else a laptop: the name, and why."""
    env = resources.env
    if env.ray_address is not None:
        if environ.get("RAY_ADDRESS"):
            return "ray", "RAY_ADDRESS is set"
        return "ray", f"a Ray address was found ({env.ray_address})"
    if env.kaggle:
        for var in ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE"):
            if environ.get(var):
                return "kaggle", f"{var} is set"
        return "kaggle", "a Kaggle environment was detected (/kaggle/working)"
    cpus = resources.cpus.value
    if cpus is not None and cpus >= AUTO_SERVER_MIN_CPUS:
        return "server", f"{cpus} CPUs (>= {AUTO_SERVER_MIN_CPUS})"
    if cpus is None:
        return "laptop", "CPU count unknown, not Ray or Kaggle"
    return "laptop", f"{cpus} CPUs (< {AUTO_SERVER_MIN_CPUS}), not Ray or Kaggle"
