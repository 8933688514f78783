"""What this machine can afford now: CPUs, memory, tasks, ``/dev/shm``, and where we run.

Each figure comes from small sources that return ``None`` when they cannot read and never raise;
the smallest figure wins and its :class:`Reading` says where it came from (cgroup limits from
:mod:`.cgroup`). An environment variable (``STEPDOWN_CPUS``, ``STEPDOWN_MEMORY``, ...) replaces a
figure on hosts that lie; a value it cannot use is an error, as for every ``STEPDOWN_*``
variable (:mod:`stepdown.units`). The file layer takes a ``root`` directory so tests can point
it at a fixture tree. psutil is imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..records import record
from ..units import bad_variable, parse_size, variable
from .cgroup import (
    CONTROLLERS,
    Cgroup,
    CgroupEntry,
    Mount,
    cgroup_cpus,
    cgroup_memory,
    cgroup_tasks_left,
    find_cgroups,
    parse_cfs,
    parse_cpu_max,
    parse_int,
    parse_memory_limit,
    parse_memory_stat,
    parse_mountinfo,
    parse_pids_max,
    parse_proc_cgroup,
)
from .reading import Reading, read_text, smallest, under

# The probe's public face: its figures, and the cgroup parsers it reads them with.
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


@record(frozen=True)
class Environment:
    """Where this process runs, as far as cheap signals tell."""

    kaggle: bool
    ci: bool
    ray_address: str | None
    container: bool


@record(frozen=True)
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
        import dataclasses  # not on a run's path (records.py)

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Reading, Environment)):
                out[f.name] = dataclasses.asdict(value)
            elif isinstance(value, Mapping):
                out[f.name] = dict(value)
            else:
                out[f.name] = value
        return out


def parse_loadavg_threads(text: str) -> int | None:
    """Threads alive on the system: the total in field 4 (``running/total``) of /proc/loadavg."""
    parts = text.split()
    if len(parts) < 4:
        return None
    return parse_int(parts[3].partition("/")[2])


def affinity_cpus() -> Reading | None:
    """CPUs this process may run on."""
    try:
        return Reading(len(os.sched_getaffinity(0)), "sched_getaffinity")
    except (AttributeError, OSError):  # AttributeError: not on Linux
        return None


def threads_left(root: str = "/") -> Reading | None:
    """Threads the kernel's system-wide ``threads-max`` still allows."""
    threads_max = parse_int(read_text(under(root, "/proc/sys/kernel/threads-max")))
    threads = parse_loadavg_threads(read_text(under(root, "/proc/loadavg")))
    if threads_max is None or threads is None:
        return None
    return Reading(max(0, threads_max - threads), "threads-max - threads in /proc/loadavg")


def host_memory(root: str = "/") -> tuple[Reading | None, Reading | None]:
    """(available, total) RAM, the host's view, blind to cgroup limits: ``/proc/meminfo``
    where there is one (what psutil reads there too, without the ~15 ms of importing it),
    else psutil."""
    fields = parse_meminfo(read_text(under(root, "/proc/meminfo")))
    if "MemAvailable" in fields and "MemTotal" in fields:
        return (
            Reading(fields["MemAvailable"], "/proc/meminfo MemAvailable"),
            Reading(fields["MemTotal"], "/proc/meminfo MemTotal"),
        )
    try:
        import psutil

        vm = psutil.virtual_memory()
        available, total = int(vm.available), int(vm.total)
    except Exception:  # psutil missing or failing on an odd host: this source has no figure
        return None, None
    return Reading(available, "psutil available"), Reading(total, "psutil total")


def parse_meminfo(text: str | None) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by field (``{}``: unreadable)."""
    fields: dict[str, int] = {}
    for line in (text or "").splitlines():
        name, _, rest = line.partition(":")
        value = rest.split()
        if value and value[0].isdigit():
            fields[name] = int(value[0]) * (1024 if value[1:] == ["kB"] else 1)
    return fields


def caller_rss() -> Reading | None:
    """Resident memory of this process: ``/proc/self/statm`` where there is one, else psutil."""
    statm = read_text("/proc/self/statm")
    if statm is not None and len(statm.split()) > 1 and statm.split()[1].isdigit():
        return Reading(int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE"), "/proc/self/statm")
    try:
        import psutil

        return Reading(int(psutil.Process().memory_info().rss), "psutil rss")
    except Exception:  # psutil missing or failing on an odd host: this source has no figure
        return None


def shm_free(root: str = "/") -> Reading | None:
    """Bytes an unprivileged process can still write to ``/dev/shm`` (process pools use it)."""
    try:
        st = os.statvfs(under(root, "/dev/shm"))
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
        any(os.path.exists(under(root, m)) for m in ("/.dockerenv", "/run/.containerenv"))
        or bool(environ.get("container"))  # set by systemd-nspawn and lxc
        # A cgroup mount showing a subtree of its hierarchy was handed in from outside.
        or any(m.fstype in ("cgroup", "cgroup2") and m.root != "/" for m in mounts or ())
    )
    return Environment(
        kaggle=kaggle or os.path.isdir(under(root, "/kaggle/working")),
        ci=ci,
        ray_address=environ.get("RAY_ADDRESS") or None,
        container=container,
    )


# The largest figures an override may give: Linux's largest CPU count (NR_CPUS), and its
# largest threads-max. Beyond them a value is a typo, and the budget and the pools are sized
# from these figures.
_MAX_CPUS = 8192
_MAX_TASKS_LEFT = 2**30


def _count(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        # isascii: int() also takes other scripts' digits; the length keeps int() cheap.
        whole = text.isascii() and text.isdigit() and len(text) <= 20
        if not whole or not minimum <= int(text) <= maximum:
            raise ValueError(f"expected a whole number from {minimum} to {maximum}")
        return int(text)

    return parse


_OVERRIDES: Mapping[str, Callable[[str], int]] = {
    "STEPDOWN_CPUS": _count(1, _MAX_CPUS),
    "STEPDOWN_MEMORY": parse_size,
    "STEPDOWN_MEMORY_LIMIT": parse_size,
    "STEPDOWN_TASKS_LEFT": _count(0, _MAX_TASKS_LEFT),
    "STEPDOWN_SHM": parse_size,
}


def override(environ: Mapping[str, str], name: str) -> Reading | None:
    """The figure an environment variable forces, or ``None`` when it is unset or empty.
    Raises :class:`UsageError` for a value that is malformed or out of range (sizes: at most
    1 EiB): a figure set on purpose and then ignored would size the run wrongly."""
    text = variable(environ, name)
    if text is None:
        return None
    try:
        return Reading(_OVERRIDES[name](text), name)
    except ValueError as exc:
        raise bad_variable(name, text, str(exc)) from None


def read_resources(environ: Mapping[str, str], *, root: str = "/") -> Resources:
    """Read every source now, under ``root`` (a fixture tree in tests). A source that cannot
    read never raises; a malformed override does (:func:`override`)."""
    entries = parse_proc_cgroup(read_text(under(root, "/proc/self/cgroup")))
    mounts = parse_mountinfo(read_text(under(root, "/proc/self/mountinfo")))
    groups = find_cgroups(entries, mounts, root)
    cpu, memory, pids = (groups.get(c) for c in CONTROLLERS)

    count = os.cpu_count()
    base_cpus = affinity_cpus() or Reading(count or 1, "os.cpu_count" if count else "fallback 1")
    host_available, host_total = host_memory(root)
    cgroup_limit, cgroup_available = cgroup_memory(memory) if memory else (None, None)

    def pick(name: str, *readings: Reading | None, unknown: str) -> Reading:
        return override(environ, name) or smallest(*readings) or Reading(None, unknown)

    versions = {g.version for g in groups.values()}
    return Resources(
        cpus=override(environ, "STEPDOWN_CPUS")
        or smallest(base_cpus, cgroup_cpus(cpu) if cpu else None)
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
        caller_rss=caller_rss() or Reading(None, "no /proc/self/statm, psutil unavailable"),
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
    """What this machine can afford now (see :func:`read_resources`).

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
