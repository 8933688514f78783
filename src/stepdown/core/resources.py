"""What this machine can afford now: CPUs, memory, tasks, ``/dev/shm``, and where we run.

Each figure comes from small sources that return ``None`` when they cannot read and never raise;
the smallest figure wins and its :class:`Reading` says where it came from. An environment
variable (``STEPDOWN_CPUS``, ``STEPDOWN_MEMORY``, ...) replaces a figure on hosts that lie.

cgroups are found where the kernel says they are, never at a hard-coded path:
``/proc/self/cgroup`` names each controller's group relative to its hierarchy, and
``/proc/self/mountinfo`` says where that hierarchy is mounted and which part of it the mount shows
(a namespaced or delegated mount shows a subtree). Limits are read at the group and at every
ancestor up to the mount, because a parent's limit binds its children.

Parsers take text; the file layer takes a ``root`` directory so tests can point it at a fixture
tree. psutil is imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from .units import parse_size

__all__ = [
    "Cgroup",
    "CgroupEntry",
    "Environment",
    "Mount",
    "Reading",
    "Resources",
    "find_cgroups",
    "parse_cfs",
    "parse_cpu_max",
    "parse_loadavg_threads",
    "parse_memory_limit",
    "parse_memory_stat",
    "parse_mountinfo",
    "parse_pids_max",
    "parse_proc_cgroup",
    "probe",
    "read_resources",
    "tree_rss",
]

_log = logging.getLogger("stepdown")

# cgroup v1 writes "no limit" as LONG_MAX rounded down to a page (9223372036854771712); no real
# machine has an exbibyte, so anything this big means unlimited.
_UNLIMITED = 2**60

# The controllers whose limits stepdown plans with.
_CONTROLLERS = ("cpu", "memory", "pids")


@dataclass(frozen=True)
class Reading:
    """One figure and where it came from. ``value=None``: could not read, or no limit."""

    value: int | None
    source: str


@dataclass(frozen=True)
class Environment:
    """Where this process runs, as far as cheap signals tell."""

    kaggle: bool
    ci: bool
    ray_address: str | None
    container: bool


@dataclass(frozen=True)
class Resources:
    """A snapshot of what this machine can afford now. Byte figures are in bytes."""

    cpus: Reading  # usable CPUs: always a value >= 1
    memory_available: Reading  # the smaller of psutil's available and cgroup limit - usage
    memory_limit: Reading  # the smaller of the cgroup limit and total RAM
    tasks_left: Reading  # threads + processes still allowed; None: unknown or unlimited
    shm_free: Reading  # free on /dev/shm
    caller_rss: Reading  # this process's RSS
    env: Environment
    cgroup_version: int | None  # 1 if any figure came from a v1 hierarchy, 2 if only v2, or None
    cgroup_paths: Mapping[str, str]  # controller -> the group directory read (for doctor output)

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON-able data."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Reading, Environment)):
                out[f.name] = asdict(value)
            elif isinstance(value, Mapping):
                out[f.name] = dict(value)
            else:
                out[f.name] = value
        return out


# --- parsers: text in, values out; garbage gives None or is skipped, never an exception ---


@dataclass(frozen=True)
class CgroupEntry:
    """One line of ``/proc/self/cgroup``: ``hierarchy-ID:controllers:path``."""

    hierarchy: int
    controllers: tuple[str, ...]  # empty on the v2 line "0::/path"; may hold "name=systemd"
    path: str  # relative to the hierarchy's root (or to the cgroup namespace's root)


@dataclass(frozen=True)
class Mount:
    """The fields of one ``/proc/self/mountinfo`` line that locating a cgroup needs."""

    root: str  # field 4: the directory of the mounted hierarchy that appears at the mount point
    mount_point: str  # field 5
    fstype: str
    super_options: tuple[str, ...]  # for cgroup v1, these name the hierarchy's controllers


@dataclass(frozen=True)
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


def _int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_cpu_max(text: str) -> int | None:
    """CPUs a v2 ``cpu.max`` allows (``"50000 100000"`` → 1); ``None`` for ``max`` or garbage."""
    parts = text.split()
    if len(parts) != 2:
        return None
    return _quota_cpus(_int(parts[0]), _int(parts[1]))


def parse_cfs(quota_text: str, period_text: str) -> int | None:
    """CPUs allowed by v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; ``None`` for ``-1``."""
    return _quota_cpus(_int(quota_text), _int(period_text))


def _quota_cpus(quota: int | None, period: int | None) -> int | None:
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    # A quota of 1.5 CPUs keeps two workers busy part of the time: round up, as loky does.
    return max(1, math.ceil(quota / period))


def parse_memory_limit(text: str) -> int | None:
    """Bytes from ``memory.max`` / ``memory.limit_in_bytes``; ``None`` for ``max`` or ≥ 2**60."""
    return _limited(_int(text))


def _limited(value: int | None) -> int | None:
    return value if value is not None and 0 <= value < _UNLIMITED else None


def parse_memory_stat(text: str) -> dict[str, int]:
    """``memory.stat`` (v1 or v2) as a mapping of counter name to value."""
    stat = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and (value := _int(parts[1])) is not None:
            stat[parts[0]] = value
    return stat


def parse_pids_max(text: str) -> int | None:
    """The number in ``pids.max``; ``None`` for ``max`` or garbage."""
    return _int(text)


def parse_loadavg_threads(text: str) -> int | None:
    """Threads alive on the system: the total in field 4 (``running/total``) of /proc/loadavg."""
    parts = text.split()
    if len(parts) < 4:
        return None
    return _int(parts[3].partition("/")[2])


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
    for controller in _CONTROLLERS:
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
                version, _under(root, mount.mount_point), _below_mount(mount.root, entry.path)
            )
    return found


# --- sources: each reads one thing and returns None when it cannot ---


def _under(root: str, path: str) -> str:
    return path if root in ("", "/") else root.rstrip("/") + path


def _read(path: str) -> str:
    """The file's text, or "" when it cannot be read (every parser reads "" as no figure)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _smaller(best: Reading | None, value: int | None, source: str) -> Reading | None:
    """``best``, or a new reading if ``value`` is smaller; ties keep ``best`` (the inner group)."""
    if value is None or (best is not None and best.value is not None and best.value <= value):
        return best
    return Reading(value, source)


def _smallest(*readings: Reading | None) -> Reading | None:
    best: Reading | None = None
    for reading in readings:
        if reading is not None:
            best = _smaller(best, reading.value, reading.source)
    return best


def affinity_cpus() -> Reading | None:
    """CPUs this process may run on."""
    try:
        return Reading(len(os.sched_getaffinity(0)), "sched_getaffinity")
    except (AttributeError, OSError):  # AttributeError: not on Linux
        return None


def cgroup_cpus(group: Cgroup) -> Reading | None:
    """CPUs the CFS quota of the group, or of its tightest ancestor, allows."""
    best = None
    for directory in group.directories():
        if group.version == 2:
            cpus, files = parse_cpu_max(_read(directory + "/cpu.max")), "cpu.max"
        else:
            quota = _read(directory + "/cpu.cfs_quota_us")
            cpus = parse_cfs(quota, _read(directory + "/cpu.cfs_period_us"))
            files = "cpu.cfs_quota_us/cfs_period_us"
        best = _smaller(best, cpus, f"cgroup v{group.version} {files} at {directory}")
    return best


def _memory_at(version: int, directory: str) -> tuple[int | None, str, int | None]:
    """(limit, the name it was read under, usage) of one group directory.

    Usage leaves out inactive file cache, which the kernel reclaims before it OOM-kills.
    """
    stat = parse_memory_stat(_read(directory + "/memory.stat"))
    if version == 2:
        limit, name = parse_memory_limit(_read(directory + "/memory.max")), "memory.max"
        current, inactive = _int(_read(directory + "/memory.current")), stat.get("inactive_file")
    else:
        # hierarchical_memory_limit folds in ancestors we may not see (a namespaced mount);
        # memory.limit_in_bytes stands in when memory.stat lacks it.
        limit, name = _limited(stat.get("hierarchical_memory_limit")), "hierarchical_memory_limit"
        own = parse_memory_limit(_read(directory + "/memory.limit_in_bytes"))
        if own is not None and (limit is None or own < limit):
            limit, name = own, "memory.limit_in_bytes"
        current = _int(_read(directory + "/memory.usage_in_bytes"))
        inactive = stat.get("total_inactive_file", stat.get("inactive_file"))
    usage = None if current is None else max(0, current - (inactive or 0))
    return limit, name, usage


def cgroup_memory(group: Cgroup) -> tuple[Reading | None, Reading | None]:
    """(limit, limit minus usage) of the group or its tightest ancestor; ``None``: no limit."""
    limit = available = None
    for directory in group.directories():
        level_limit, name, usage = _memory_at(group.version, directory)
        if level_limit is None:
            continue
        where = f"cgroup v{group.version} {name}"
        limit = _smaller(limit, level_limit, f"{where} at {directory}")
        if usage is not None:
            free = max(0, level_limit - usage)
            available = _smaller(available, free, f"{where} - usage at {directory}")
    return limit, available


def cgroup_tasks_left(group: Cgroup) -> Reading | None:
    """Threads and processes the pids limit of the group or its tightest ancestor still allows."""
    best = None
    for directory in group.directories():
        limit = parse_pids_max(_read(directory + "/pids.max"))
        current = _int(_read(directory + "/pids.current"))
        if limit is not None and current is not None:
            source = f"cgroup v{group.version} pids.max - pids.current at {directory}"
            best = _smaller(best, max(0, limit - current), source)
    return best


def threads_left(root: str = "/") -> Reading | None:
    """Threads the kernel's system-wide ``threads-max`` still allows."""
    threads_max = _int(_read(_under(root, "/proc/sys/kernel/threads-max")))
    threads = parse_loadavg_threads(_read(_under(root, "/proc/loadavg")))
    if threads_max is None or threads is None:
        return None
    return Reading(max(0, threads_max - threads), "threads-max - threads in /proc/loadavg")


def host_memory() -> tuple[Reading | None, Reading | None]:
    """(available, total) RAM as psutil reads it: the host's view, blind to cgroup limits."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        available, total = int(vm.available), int(vm.total)
    except Exception:  # psutil missing or failing on an odd host: this source has no figure
        return None, None
    return Reading(available, "psutil available"), Reading(total, "psutil total")


def caller_rss() -> Reading | None:
    """Resident memory of this process."""
    try:
        import psutil

        return Reading(int(psutil.Process().memory_info().rss), "psutil rss")
    except Exception:  # psutil missing or failing on an odd host: this source has no figure
        return None


def shm_free(root: str = "/") -> Reading | None:
    """Bytes an unprivileged process can still write to ``/dev/shm`` (process pools use it)."""
    try:
        st = os.statvfs(_under(root, "/dev/shm"))
    except (AttributeError, OSError):
        return None
    return Reading(st.f_bavail * st.f_frsize, "statvfs /dev/shm")


def environment(
    environ: Mapping[str, str], root: str = "/", mounts: list[Mount] | None = None
) -> Environment:
    """Kaggle, CI, a Ray cluster, a container: the signals the policy table keys on."""
    ci = environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")
    kaggle = bool(environ.get("KAGGLE_KERNEL_RUN_TYPE") or environ.get("KAGGLE_URL_BASE"))
    container = (
        any(os.path.exists(_under(root, m)) for m in ("/.dockerenv", "/run/.containerenv"))
        or bool(environ.get("container"))  # set by systemd-nspawn and lxc
        # A cgroup mount showing a subtree of its hierarchy was handed in from outside.
        or any(m.fstype in ("cgroup", "cgroup2") and m.root != "/" for m in mounts or ())
    )
    return Environment(
        kaggle=kaggle or os.path.isdir(_under(root, "/kaggle/working")),
        ci=ci,
        ray_address=environ.get("RAY_ADDRESS") or None,
        container=container,
    )


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise ValueError(f"expected a whole number of at least {minimum}")
        return int(text)

    return parse


_OVERRIDES: Mapping[str, Callable[[str], int]] = {
    "STEPDOWN_CPUS": _count(1),
    "STEPDOWN_MEMORY": parse_size,
    "STEPDOWN_MEMORY_LIMIT": parse_size,
    "STEPDOWN_TASKS_LEFT": _count(0),
    "STEPDOWN_SHM": parse_size,
}


def override(environ: Mapping[str, str], name: str) -> Reading | None:
    """The figure an environment variable forces, or ``None`` when unset or malformed."""
    text = environ.get(name, "").strip()
    if not text:  # `STEPDOWN_CPUS= cmd` unsets it, as shells users expect
        return None
    try:
        return Reading(_OVERRIDES[name](text), name)
    except ValueError as exc:
        # A typo must not stop a run: warn, and measure instead.
        _log.warning("ignoring %s=%r: %s; measuring that figure instead", name, text, exc)
        return None


def read_resources(environ: Mapping[str, str], *, root: str = "/") -> Resources:
    """Read every source now, under ``root`` (a fixture tree in tests). Never raises."""
    entries = parse_proc_cgroup(_read(_under(root, "/proc/self/cgroup")))
    mounts = parse_mountinfo(_read(_under(root, "/proc/self/mountinfo")))
    groups = find_cgroups(entries, mounts, root)
    cpu, memory, pids = (groups.get(c) for c in _CONTROLLERS)

    count = os.cpu_count()
    base_cpus = affinity_cpus() or Reading(count or 1, "os.cpu_count" if count else "fallback 1")
    host_available, host_total = host_memory()
    cgroup_limit, cgroup_available = cgroup_memory(memory) if memory else (None, None)

    def pick(name: str, *readings: Reading | None, unknown: str) -> Reading:
        return override(environ, name) or _smallest(*readings) or Reading(None, unknown)

    versions = {g.version for g in groups.values()}
    return Resources(
        cpus=override(environ, "STEPDOWN_CPUS")
        or _smallest(base_cpus, cgroup_cpus(cpu) if cpu else None)
        or base_cpus,
        memory_available=pick(
            "STEPDOWN_MEMORY", host_available, cgroup_available, unknown="no memory source read"
        ),
        memory_limit=pick(
            "STEPDOWN_MEMORY_LIMIT", host_total, cgroup_limit, unknown="no memory source read"
        ),
        tasks_left=pick(
            "STEPDOWN_TASKS_LEFT",
            cgroup_tasks_left(pids) if pids else None,
            threads_left(root),
            unknown="no pids limit or threads-max read",
        ),
        shm_free=pick("STEPDOWN_SHM", shm_free(root), unknown="/dev/shm not readable"),
        caller_rss=caller_rss() or Reading(None, "psutil unavailable"),
        env=environment(environ, root, mounts),
        cgroup_version=min(versions) if versions else None,
        cgroup_paths={c: g.directories()[0] for c, g in groups.items()},
    )


# Variables a snapshot depends on: a cached snapshot is reused only while they are unchanged.
_ENV_KEYS = (
    *_OVERRIDES,
    "CI",
    "KAGGLE_KERNEL_RUN_TYPE",
    "KAGGLE_URL_BASE",
    "RAY_ADDRESS",
    "container",
)
_cache_lock = threading.Lock()
_cache: tuple[float, tuple[object, ...], Resources] | None = None


def probe(environ: Mapping[str, str] | None = None, *, max_age: float = 0.0) -> Resources:
    """What this machine can afford now. Never raises.

    ``environ`` defaults to ``os.environ``. With ``max_age > 0``, a snapshot taken less than
    ``max_age`` seconds ago by this process, under the same variables, is returned as is.
    """
    global _cache
    env = os.environ if environ is None else environ
    # The pid is in the key: a forked child has its own RSS and maybe its own cgroup.
    key = (os.getpid(), *(env.get(name) for name in _ENV_KEYS))
    now = time.monotonic()
    with _cache_lock:
        cached = _cache
    if max_age > 0 and cached is not None and cached[1] == key and now - cached[0] < max_age:
        return cached[2]
    resources = read_resources(env)
    with _cache_lock:
        _cache = (now, key, resources)
    return resources


def tree_rss(pid: int | None) -> int:
    """RSS of a process and its descendants, in bytes; 0 when the process cannot be read."""
    if pid is None:
        return 0
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in family:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total
