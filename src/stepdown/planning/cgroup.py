"""cgroups, found where the kernel says they are, and the limits read from them.

``/proc/self/cgroup`` names each controller's group relative to its hierarchy, and
``/proc/self/mountinfo`` says where that hierarchy is mounted and which part of it the mount shows
(a namespaced or delegated mount shows a subtree); never a hard-coded path. Limits are read at
the group and at every ancestor up to the mount, because a parent's limit binds its children.

Parsers take text (tests feed them fixture files of real v1 and v2 layouts); garbage gives
``None`` or is skipped, never an exception.
"""

from __future__ import annotations

import math
import re

from ..records import record
from .reading import Reading, read_text, smaller, under

__all__ = [
    "CONTROLLERS",
    "Cgroup",
    "CgroupEntry",
    "Mount",
    "cgroup_cpus",
    "cgroup_memory",
    "cgroup_tasks_left",
    "find_cgroups",
    "parse_cfs",
    "parse_cpu_max",
    "parse_int",
    "parse_memory_limit",
    "parse_memory_stat",
    "parse_mountinfo",
    "parse_pids_max",
    "parse_proc_cgroup",
]

# cgroup v1 writes "no limit" as LONG_MAX rounded down to a page (9223372036854771712); no real
# machine has an exbibyte, so anything this big means unlimited.
_UNLIMITED = 2**60

# The controllers whose limits stepdown plans with.
CONTROLLERS = ("cpu", "memory", "pids")


@record(frozen=True)
class CgroupEntry:
    """One line of ``/proc/self/cgroup``: ``hierarchy-ID:controllers:path``."""

    hierarchy: int
    controllers: tuple[str, ...]  # empty on the v2 line "0::/path"; may hold "name=systemd"
    path: str  # relative to the hierarchy's root (or to the cgroup namespace's root)


@record(frozen=True)
class Mount:
    """The fields of one ``/proc/self/mountinfo`` line that locating a cgroup needs."""

    root: str  # field 4: the directory of the mounted hierarchy that appears at the mount point
    mount_point: str  # field 5
    fstype: str
    super_options: tuple[str, ...]  # for cgroup v1, these name the hierarchy's controllers


@record(frozen=True)
class Cgroup:
    """A process's group in one hierarchy: the mount and the group's path below it."""

    version: int
    mount_point: str
    path: str  # below mount_point; "/" is the mount itself

    def directories(self) -> list[str]:
        """The group's directory, then each parent up to and including the mount point."""
        parts = [p for p in self.path.split("/") if p]
        base = self.mount_point.rstrip("/")
        return ["/".join([base, *parts[:n]]) or "/" for n in range(len(parts), -1, -1)]


def parse_proc_cgroup(text: str) -> list[CgroupEntry]:
    """Lines of ``/proc/self/cgroup``; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        # maxsplit: a group path may itself contain ':'.
        parts = line.strip().split(":", 2)
        if len(parts) == 3 and parts[0].isdigit():
            controllers = tuple(c for c in parts[1].split(",") if c)
            entries.append(CgroupEntry(int(parts[0]), controllers, parts[2]))
    return entries


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(path: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as octal escapes ("\040").
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), path)


def parse_mountinfo(text: str) -> list[Mount]:
    """Lines of ``/proc/self/mountinfo``; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        # A variable number of optional fields ends at " - ", before fstype, source, options.
        head, sep, tail = line.partition(" - ")
        before, after = head.split(), tail.split()
        if sep and len(before) >= 6 and len(after) >= 3:
            mounts.append(
                Mount(
                    root=_unescape(before[3]),
                    mount_point=_unescape(before[4]),
                    fstype=after[0],
                    super_options=tuple(after[2].split(",")),
                )
            )
    return mounts


def parse_int(text: str) -> int | None:
    """A whole number from a file's text, or ``None``."""
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_cpu_max(text: str) -> int | None:
    """CPUs a v2 ``cpu.max`` allows (``"50000 100000"`` → 1); ``None`` for ``max`` or garbage."""
    parts = text.split()
    if len(parts) != 2:
        return None
    return _quota_cpus(parse_int(parts[0]), parse_int(parts[1]))


def parse_cfs(quota_text: str, period_text: str) -> int | None:
    """CPUs allowed by v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; ``None`` for ``-1``."""
    return _quota_cpus(parse_int(quota_text), parse_int(period_text))


def _quota_cpus(quota: int | None, period: int | None) -> int | None:
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    # A quota of 1.5 CPUs keeps two workers busy part of the time: round up, as loky does.
    return max(1, math.ceil(quota / period))


def parse_memory_limit(text: str) -> int | None:
    """Bytes from ``memory.max`` / ``memory.limit_in_bytes``; ``None`` for ``max`` or ≥ 2**60."""
    return _limited(parse_int(text))


def _limited(value: int | None) -> int | None:
    return value if value is not None and 0 <= value < _UNLIMITED else None


def parse_memory_stat(text: str) -> dict[str, int]:
    """``memory.stat`` (v1 or v2) as a mapping of counter name to value."""
    stat = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and (value := parse_int(parts[1])) is not None:
            stat[parts[0]] = value
    return stat


def parse_pids_max(text: str) -> int | None:
    """The number in ``pids.max``; ``None`` for ``max`` or garbage."""
    return parse_int(text)


def _below_mount(mount_root: str, path: str) -> str:
    """Where a group from /proc/self/cgroup sits below a mount that shows ``mount_root``."""
    parts = [p for p in path.split("/") if p]
    if ".." in parts:
        # The group is outside our cgroup namespace: the mount is the nearest part we can see.
        return "/"
    root_parts = [p for p in mount_root.split("/") if p]
    if parts[: len(root_parts)] == root_parts:
        parts = parts[len(root_parts) :]
    # Otherwise the path is relative to a cgroup namespace rooted where the mount's root is
    # (a container that sees itself at "/" while the mount shows /docker/<id>): use it as is.
    return "/" + "/".join(parts)


def _pick_mount(mounts: list[Mount], path: str) -> Mount | None:
    # A hierarchy can be mounted more than once; prefer a mount that shows the group's subtree.
    for mount in mounts:
        root = mount.root.rstrip("/")
        if path == root or path.startswith(root + "/"):
            return mount
    return mounts[0] if mounts else None


def find_cgroups(
    entries: list[CgroupEntry], mounts: list[Mount], root: str = "/"
) -> dict[str, Cgroup]:
    """Each of cpu, memory and pids → its group, v1 where a v1 hierarchy has it, else v2.

    ``root`` is prefixed to mount points, so a fixture tree can stand in for ``/``.
    """
    found: dict[str, Cgroup] = {}
    unified = next((e for e in entries if e.hierarchy == 0 and not e.controllers), None)
    for controller in CONTROLLERS:
        entry = next((e for e in entries if controller in e.controllers), None)
        if entry is not None:
            candidates = [
                m for m in mounts if m.fstype == "cgroup" and controller in m.super_options
            ]
            version = 1
        elif unified is not None:
            # Hybrid hosts list the v2 line too; a controller not bound to v1 may live there.
            entry, version = unified, 2
            candidates = [m for m in mounts if m.fstype == "cgroup2"]
        else:
            continue
        mount = _pick_mount(candidates, entry.path)
        if mount is not None:
            found[controller] = Cgroup(
                version, under(root, mount.mount_point), _below_mount(mount.root, entry.path)
            )
    return found


# --- sources: each reads one group's files and gives None when it cannot ---


def cgroup_cpus(group: Cgroup) -> Reading | None:
    """CPUs the CFS quota of the group, or of its tightest ancestor, allows."""
    best = None
    for directory in group.directories():
        if group.version == 2:
            cpus, files = parse_cpu_max(read_text(directory + "/cpu.max")), "cpu.max"
        else:
            quota = read_text(directory + "/cpu.cfs_quota_us")
            cpus = parse_cfs(quota, read_text(directory + "/cpu.cfs_period_us"))
            files = "cpu.cfs_quota_us/cfs_period_us"
        best = smaller(best, cpus, f"cgroup v{group.version} {files} at {directory}")
    return best


def _memory_at(
    version: int, directory: str, all_cache: bool = False
) -> tuple[int | None, str, int | None]:
    """(limit, the name it was read under, usage) of one group directory.

    Usage leaves out inactive file cache, which the kernel reclaims before it OOM-kills (and,
    with ``all_cache``, the active file cache too, which it also reclaims, later).
    """
    stat = parse_memory_stat(read_text(directory + "/memory.stat"))
    if version == 2:
        limit, name = parse_memory_limit(read_text(directory + "/memory.max")), "memory.max"
        current, inactive = (
            parse_int(read_text(directory + "/memory.current")),
            stat.get("inactive_file", 0) + (stat.get("active_file", 0) if all_cache else 0),
        )
    else:
        # hierarchical_memory_limit folds in ancestors we may not see (a namespaced mount);
        # memory.limit_in_bytes stands in when memory.stat lacks it.
        limit, name = _limited(stat.get("hierarchical_memory_limit")), "hierarchical_memory_limit"
        own = parse_memory_limit(read_text(directory + "/memory.limit_in_bytes"))
        if own is not None and (limit is None or own < limit):
            limit, name = own, "memory.limit_in_bytes"
        current = parse_int(read_text(directory + "/memory.usage_in_bytes"))
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        if all_cache:
            inactive += stat.get("total_active_file", stat.get("active_file", 0))
    usage = None if current is None else max(0, current - (inactive or 0))
    return limit, name, usage


def cgroup_memory(group: Cgroup, all_cache: bool = False) -> tuple[Reading | None, Reading | None]:
    """(limit, limit minus usage) of the group or its tightest ancestor; ``None``: no limit.
    ``all_cache``: count all file cache as free (see :func:`_memory_at`)."""
    limit = available = None
    for directory in group.directories():
        level_limit, name, usage = _memory_at(group.version, directory, all_cache)
        if level_limit is None:
            continue
        where = f"cgroup v{group.version} {name}"
        limit = smaller(limit, level_limit, f"{where} at {directory}")
        if usage is not None:
            free = max(0, level_limit - usage)
            available = smaller(available, free, f"{where} - usage at {directory}")
    return limit, available


def cgroup_tasks_left(group: Cgroup) -> Reading | None:
    """Threads and processes the pids limit of the group or its tightest ancestor still allows."""
    best = None
    for directory in group.directories():
        limit = parse_pids_max(read_text(directory + "/pids.max"))
        current = parse_int(read_text(directory + "/pids.current"))
        if limit is not None and current is not None:
            source = f"cgroup v{group.version} pids.max - pids.current at {directory}"
            best = smaller(best, max(0, limit - current), source)
    return best
