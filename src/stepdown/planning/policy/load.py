"""Loading the policy and choosing the profile.

Where the policy comes from, first found wins::

    argument ─▶ $STEPDOWN_POLICY ─▶ ./stepdown.toml ─▶ ./pyproject.toml [tool.stepdown] ─▶ built-in

Which profile, first found wins::

    argument ─▶ $STEPDOWN_PROFILE ─▶ the policy's top-level ``profile`` ─▶ "auto"

``auto`` picks the first of the user's profiles whose ``when`` holds, else a built-in one (see
:func:`_auto`). A user's profiles are laid over the built-in ones by name (a user's ``kaggle``
replaces the built-in ``kaggle``, or ``extends`` it). The format is in ``docs/policy.md``.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ...errors import PolicyError
from ...units import format_size, shown, variable
from ..resources import Resources, probe
from .model import Policy, Profile
from .parse import builtin, parse_document, profile_names
from .values import describe

__all__ = [
    "AUTO_SERVER_MIN_CPUS",
    "MAX_POLICY_BYTES",
    "PolicySpec",
    "choose_profile",
    "load_policy",
]

# What `auto` picks, checked in this order: Ray, Kaggle, a big host, else a laptop.
AUTO_SERVER_MIN_CPUS = 16

PolicySpec = str | os.PathLike[str] | Mapping[str, Any] | Policy | None

# A policy is a few KiB; the bound keeps /dev/zero or a wrong multi-gigabyte file out of memory.
MAX_POLICY_BYTES = 1024**2

# What a path may name instead of a regular file, as a message says it.
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


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
        return _merge(parse_document(policy, "<dict>", "", "argument (dict)"))
    if isinstance(policy, (str, os.PathLike)):
        path = _absolute(base, policy)
        return _merge(_load_file(path, "", f"argument ({path})"))
    if policy is not None:
        raise PolicyError(
            "a policy is a path to a TOML file, a table (dict) or a Policy, "
            f"not {type(policy).__name__}",
            source="argument",
        )
    from_env = variable(env, "STEPDOWN_POLICY")
    if from_env is not None:
        path = _absolute(base, from_env)
        label = f"STEPDOWN_POLICY ({path})"
        return _merge(_load_file(path, "", label, " named by STEPDOWN_POLICY"))
    if base is None:  # the working directory was deleted: it holds no policy
        return builtin()
    # exists(), not is_file(): a FIFO or a directory by that name is refused, not passed over.
    path = os.path.join(base, "stepdown.toml")
    if os.path.exists(path):
        return _merge(_load_file(path, "", f"stepdown.toml ({path})"))
    path = os.path.join(base, "pyproject.toml")
    if os.path.exists(path):
        found = _load_file(path, "tool.stepdown", f"pyproject.toml [tool.stepdown] ({path})")
        if found is not None:
            return _merge(found)
    return builtin()


def _working_directory(cwd: str | os.PathLike[str] | None) -> str | None:
    try:
        here = os.getcwd() if cwd is None or not os.path.isabs(cwd) else ""
    except OSError:
        return None
    return os.path.join(here, os.fspath(cwd)) if cwd is not None else here


def _absolute(base: str | None, path: str | os.PathLike[str]) -> str:
    given = os.fspath(path)
    if base is None and not os.path.isabs(given):
        raise PolicyError("a relative path, and the working directory is gone", str(given))
    return given if base is None else os.path.join(base, given)


# Parsed files by (path, section, source label, content): a file is read on every call (cheap)
# but parsed and validated again only when its bytes change.
_FILE_CACHE: dict[tuple[str, str, str, bytes], Policy | None] = {}
_FILE_CACHE_SIZE = 32


def _load_file(path: str, section: str, label: str, named_by: str = "") -> Policy | None:
    """Parse one TOML file; ``section`` (``"tool.stepdown"``) selects a table in it, and its
    absence gives ``None``. ``named_by`` says where the path came from, when it cannot be read."""
    data = _read(path, named_by)
    if section and not _may_hold(data, section):
        return None
    key = (path, section, label, data)
    if key in _FILE_CACHE:
        return _FILE_CACHE[key]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"not UTF-8 text (byte {exc.start}); TOML files are UTF-8", path
        ) from None
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        document: Mapping[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"not valid TOML: {exc}", path) from None
    except RecursionError:  # the TOML reader recurses once per level of nested arrays or tables
        raise PolicyError(
            "arrays or tables nested too deeply to read; a policy needs a few levels", path
        ) from None
    table: Any = document
    prefix = ""
    if section:
        for part in section.split("."):
            if not isinstance(table, Mapping) or part not in table:
                table = None
                break
            table = table[part]
        prefix = section + "."
    result = None if table is None else parse_document(table, path, prefix, label)
    if len(_FILE_CACHE) >= _FILE_CACHE_SIZE:
        _FILE_CACHE.clear()
    _FILE_CACHE[key] = result
    return result


def _may_hold(data: bytes, section: str) -> bool:
    """False if the TOML ``data`` has no table ``section`` (``"tool.stepdown"``), as a reading
    line by line finds: no table header starts with it, and no key (dotted under the table it
    is in, or an inline table on one line) leads to it.

    Most projects' ``pyproject.toml`` has none, and a cold script then neither imports the TOML
    reader (~5 ms) nor parses the file. A line that only looks like one (in a multi-line
    string) makes it True, and the file is parsed as before."""
    wanted = section.encode()
    if wanted.rpartition(b".")[2] not in data:
        return False
    table = b""
    for line in data.splitlines():
        text = line.split(b"#", 1)[0].translate(None, b" \t\"'")
        if text.startswith(b"["):
            table = text.strip(b"[]")
            if table == wanted or table.startswith(wanted + b"."):
                return True
            continue
        key = (table + b"." + text.split(b"=", 1)[0]).lstrip(b".")
        if key == wanted or key.startswith(wanted + b"."):
            return True
        if wanted.startswith(key + b".") and wanted.rpartition(b".")[2] in text:
            return True  # tool = { stepdown = { ... } }
    return False


def _read(path: str, named_by: str) -> bytes:
    """The file's bytes, if it is a regular file of at most :data:`MAX_POLICY_BYTES`.

    O_NONBLOCK: opening a FIFO waits for a writer; this way it opens at once, and is refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(f"cannot read the policy file{named_by}: {message}", path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "a special file")
            raise PolicyError(
                f"cannot read the policy file: it is {kind}, not a regular file", path
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_POLICY_BYTES:
            chunk = os.read(fd, MAX_POLICY_BYTES + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise PolicyError(
            f"cannot read the policy file{named_by}: {exc.strerror or exc}", path
        ) from None
    finally:
        os.close(fd)
    raise PolicyError(
        f"larger than {format_size(MAX_POLICY_BYTES)}; a policy is a few KiB of TOML "
        "(is this the right file?)",
        path,
    )


def _merge(user: Policy | None) -> Policy:
    base = builtin()
    if user is None:
        return base
    # The user's first, in the order written: ``auto`` tries their ``when`` in that order.
    rest = {name: found for name, found in base.profiles.items() if name not in user.profiles}
    profiles = MappingProxyType({**user.profiles, **rest})
    return Policy(profiles, user.default_profile, user.source)


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
    elif (from_env := variable(env, "STEPDOWN_PROFILE")) is not None:
        name, origin = from_env, "STEPDOWN_PROFILE"
    elif policy.default_profile is not None:
        name, origin = policy.default_profile, f"'profile' in {policy.source}"
    else:
        name, origin = "auto", "built-in"
    if not isinstance(name, str):
        raise PolicyError(f"a profile is a name, not {describe(name)}", origin)
    if name == "auto":
        if resources is None:
            resources = probe(env, max_age=1.0)
        name, why = _auto(policy, resources, env)
        origin = f"auto: {why}" if origin == "built-in" else f"{origin} = auto; {why}"
    if name not in policy.profiles:
        raise PolicyError(
            f"unknown profile {shown(name)}; known profiles: {profile_names(policy.profiles)}",
            origin,
        )
    return policy.profiles[name], origin


def _auto(policy: Policy, resources: Resources, environ: Mapping[str, str]) -> tuple[str, str]:
    """The first profile whose ``when`` holds; else Ray, then Kaggle, then a big host, else a
    laptop: the name, and why."""
    for candidate in policy.profiles.values():
        if candidate.when is not None:
            holds, why = candidate.when.holds(None, resources)
            if holds:
                return candidate.name, f"the 'when' of profile {candidate.name} holds: {why}"
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
