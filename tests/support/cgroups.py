"""Real cgroups for stepdown's own fault tests: the kernel produces the conditions.

    Cgroup(...).set_pids_max       thread or process start in the group -> RuntimeError / EAGAIN
    pids_headroom(group, k)        the same, k tasks above what the group holds right now
    Cgroup(...).set_memory_limit   the kernel OOM killer SIGKILLs a member
    Cgroup(...).run_python(code)   a child python inside the group, its output captured
    child_env()                    the environment for a child that imports ``tests.support``

Facts measured on the development machine (cgroup v1 hybrid, root) that shape the code:

- ``pids.max`` counts threads as well as processes and root is not exempt. A process that has
  exited stays charged until it is reaped, and orphans handed to init are reaped late (about 1-2 s
  here): ``settle_pids`` waits for the charge to match the live tasks before a limit is computed.
- A v1 group can be removed while only zombies are left in it.
- v1 requires ``memory.memsw.limit_in_bytes >= memory.limit_in_bytes`` at every moment, so the
  order of the two writes depends on whether the limit goes down or up.
- With ``memory.oom_control = 1`` a member that faults past the limit blocks in D state
  (``mem_cgroup_oom_synchronize``) instead of failing; SIGKILL still ends it.

Groups are named ``PREFIX + "<owner pid>-<owner start time>-<label>"``: ``cleanup_leftovers`` can
then tell the groups of a crashed run from those of a test session running at the same time.
Nothing here needs pytest except the skips, so a child python can import it cheaply.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

PREFIX = "stepdown-test-"

_MOUNTS = Path("/proc/self/mounts")
_PROC_CGROUP = Path("/proc/self/cgroup")
# The repository: a child with it on its path can import ``tests.support``.
_ROOT = Path(__file__).resolve().parents[2]
_V1_CONTROLLERS = frozenset(
    {
        "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory",
        "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
    }
)  # fmt: skip
_OWNER = re.compile(rf"^{re.escape(PREFIX)}(\d+)-(\d+)-")
# How long a child may keep its output open after the main child exited before it is killed:
# leftover pool workers must not turn a finished run into a timeout.
_OUTPUT_GRACE = 2.0


def _skip(reason: str) -> NoReturn:
    import pytest

    pytest.skip(reason)


# --------------------------------------------------------------------------- where cgroups live


class Mounts(NamedTuple):
    """Where the cgroup hierarchies are mounted: v1 controller -> mount point, and cgroup2."""

    v1: dict[str, Path]
    v2: Path | None


def parse_mounts(text: str) -> Mounts:
    """Parse ``/proc/self/mounts`` text (a parser on text so tests can feed v1 and v2 layouts)."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]))
        if fields[2] == "cgroup2" and v2 is None:
            v2 = point
        elif fields[2] == "cgroup":
            for option in fields[3].split(","):
                if option in _V1_CONTROLLERS:
                    v1.setdefault(option, point)
    return Mounts(v1, v2)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Parse ``/proc/<pid>/cgroup``: controller -> group path; the v2 line has the key ``""``."""
    membership: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            membership[controller] = path
    return membership


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Parse ``key value`` lines (``memory.oom_control``, ``memory.events``, ``pids.events``)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values


def _version(mounts: Mounts) -> int | None:
    # A v1 hierarchy with a real controller wins: on a hybrid machine the cgroup2 mount is the
    # empty "unified" one and every controller lives in v1.
    if mounts.v1:
        return 1
    return 2 if mounts.v2 is not None else None


def _read_mounts() -> Mounts:
    try:
        return parse_mounts(_MOUNTS.read_text())
    except OSError:
        return Mounts({}, None)


def cgroup_version() -> int | None:
    """1 (v1 or hybrid), 2 (unified) or None (no cgroup filesystem mounted)."""
    return _version(_read_mounts())


# --------------------------------------------------------------------------- owners of groups


def _process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _group_name(label: str) -> str:
    # The start time guards against pid reuse (e.g. after a reboot).
    return f"{PREFIX}{os.getpid()}-{_process_start(os.getpid())}-{label}"


def _owner_alive(name: str) -> bool:
    match = _OWNER.match(name)
    return match is not None and _process_start(int(match[1])) == int(match[2])


def _enable_v2(root: Path, controllers: tuple[str, ...]) -> list[str]:
    """Enable the controllers for groups under the v2 root; return what could not be done."""
    try:
        available = (root / "cgroup.controllers").read_text().split()
        enabled = (root / "cgroup.subtree_control").read_text().split()
    except OSError as exc:
        return [f"cannot read the cgroup v2 root {root}: {exc}"]
    problems = []
    for controller in controllers:
        if controller not in available:
            problems.append(
                f"controller {controller!r} is not available in cgroup v2 at {root} "
                f"(cgroup.controllers: {' '.join(available) or 'none'})"
            )
        elif controller not in enabled:
            try:
                (root / "cgroup.subtree_control").write_text(f"+{controller}")
            except OSError as exc:
                problems.append(
                    f"cannot enable {controller!r} in {root}/cgroup.subtree_control: {exc}"
                )
    return problems


def _probe(point: Path) -> str | None:
    """Create and remove a group under a mount point: read-only bind mounts fail only here."""
    probe = point / _group_name("probe")
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot create a group under {point}: {exc}"
    return None


def missing(controllers: tuple[str, ...]) -> list[str]:
    """What is missing for groups with these controllers (empty: nothing, they can be made)."""
    if not sys.platform.startswith("linux"):
        return [f"cgroups need Linux, this is {sys.platform}"]
    if os.geteuid() != 0:
        return [f"creating cgroups needs root, euid is {os.geteuid()}"]
    mounts = _read_mounts()
    version = _version(mounts)
    if version is None:
        return ["no cgroup or cgroup2 filesystem in /proc/self/mounts"]
    if version == 2:
        assert mounts.v2 is not None
        problems = _enable_v2(mounts.v2, controllers)
        probe = None if problems else _probe(mounts.v2)
        return problems + ([probe] if probe else [])
    problems = []
    for controller in controllers:
        point = mounts.v1.get(controller)
        if point is None:
            problems.append(f"cgroup v1 controller {controller!r} is not mounted")
        elif (probe := _probe(point)) is not None:
            problems.append(probe)
    return problems


def skip_unless_cgroups(*controllers: str) -> None:
    """Skip the calling test unless this process can create groups with these controllers.

    On v2 the controllers are enabled in the root's ``cgroup.subtree_control`` if they are not.
    The reason names everything that is missing, so a skipped fault test says why it did not run.
    """
    problems = missing(controllers)
    if problems:
        _skip("real cgroup faults unavailable: " + "; ".join(problems))


# --------------------------------------------------------------------------- killing and removing


def _members(directory: Path) -> set[int]:
    """Processes in a group and in any group nested under it."""
    pids: set[int] = set()
    for sub, _, _ in os.walk(directory):
        with contextlib.suppress(FileNotFoundError, ValueError):
            pids.update(int(pid) for pid in (Path(sub) / "cgroup.procs").read_text().split())
    return pids


def _kill(directories: list[Path]) -> None:
    for directory in directories:
        for pid in _members(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _kill_and_remove(directories: list[Path], timeout: float = 10.0) -> None:
    """SIGKILL every member, then rmdir deepest first, retrying while the kernel says busy."""
    deadline = time.monotonic() + timeout
    while True:
        _kill(directories)
        busy = []
        for directory in directories:
            for sub, _, _ in os.walk(directory, topdown=False):
                try:
                    os.rmdir(sub)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    busy.append(sub)
        if not busy:
            return
        if time.monotonic() > deadline:
            members = sorted(set().union(*(_members(Path(b)) for b in busy)))
            raise RuntimeError(f"cgroups still busy after {timeout:.0f} s: {busy}, pids {members}")
        time.sleep(0.02)


def cleanup_leftovers() -> list[Path]:
    """Remove the ``PREFIX*`` groups of runs that are gone (killing what is still inside).

    Groups whose owner process is alive belong to a test session running right now and are left
    alone. Returns the removed directories; a no-op without Linux, root or cgroups.
    """
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return []
    mounts = _read_mounts()
    roots = set(mounts.v1.values()) | ({mounts.v2} if mounts.v2 is not None else set())
    leftovers = sorted(
        path
        for root in roots
        for path in root.glob(PREFIX + "*")
        if path.is_dir() and not _owner_alive(path.name)
    )
    _kill_and_remove(leftovers)
    return leftovers


# --------------------------------------------------------------------------- a group


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child python: ours, plus the repository on the path and ``env``
    on top.

    With the repository on PYTHONPATH the child can import ``tests.support.faults`` and
    ``tests.support.tasks``; unbuffered output keeps what a child printed before a SIGKILL;
    faulthandler lets a hung child be asked for its tracebacks with SIGABRT.
    """
    merged = dict(os.environ)
    merged["PYTHONPATH"] = os.pathsep.join(
        [str(_ROOT), *([merged["PYTHONPATH"]] if merged.get("PYTHONPATH") else [])]
    )
    merged.setdefault("PYTHONUNBUFFERED", "1")
    merged.setdefault("PYTHONFAULTHANDLER", "1")
    merged.update(env or {})
    return merged


class Cgroup:
    """A cgroup made for one test: a directory under each controller's hierarchy (v1) or one
    directory with the controllers enabled (v2). Created on construction, removed by
    ``destroy()`` (or on leaving the ``with`` block), which first SIGKILLs everything inside.

    Only children are put in it (``popen``, ``run_python``): moving the test process itself into
    a tight pids or memory group would break the test runner.
    """

    def __init__(self, *controllers: str, name: str | None = None) -> None:
        if not controllers:
            raise ValueError("name at least one controller, e.g. Cgroup('memory', 'pids')")
        mounts = _read_mounts()
        version = _version(mounts)
        if version is None:
            raise RuntimeError("no cgroup filesystem is mounted (see /proc/self/mounts)")
        self.version = version
        self.controllers = controllers
        self.name = _group_name(name or uuid.uuid4().hex[:8])
        self.paths: dict[str, Path] = {}
        self._owned = True
        self._destroyed = False
        self._children: list[subprocess.Popen[Any]] = []
        if version == 2:
            assert mounts.v2 is not None
            problems = _enable_v2(mounts.v2, controllers)
            if problems:
                raise RuntimeError("; ".join(problems))
            self.paths = dict.fromkeys(controllers, mounts.v2 / self.name)
        else:
            unmounted = [c for c in controllers if c not in mounts.v1]
            if unmounted:
                raise RuntimeError(f"cgroup v1 controllers not mounted: {', '.join(unmounted)}")
            self.paths = {c: mounts.v1[c] / self.name for c in controllers}
        created: list[Path] = []
        try:
            for directory in self.directories:
                directory.mkdir()
                created.append(directory)
        except BaseException:
            for directory in reversed(created):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise

    @classmethod
    def current(cls, *controllers: str) -> Cgroup:
        """The groups this process is in, as a handle that ``destroy()`` never removes.

        It lets a child started by ``run_python`` tighten its own group (``pids_headroom``) right
        before it starts a pool, counting its own threads, as production hit the limit.
        """
        mounts = _read_mounts()
        version = _version(mounts)
        membership = parse_proc_cgroup(_PROC_CGROUP.read_text())
        if version == 1:
            paths = {c: mounts.v1[c] / membership[c].lstrip("/") for c in controllers}
        elif version == 2 and mounts.v2 is not None:
            paths = dict.fromkeys(controllers, mounts.v2 / membership[""].lstrip("/"))
        else:
            raise RuntimeError("no cgroup filesystem is mounted (see /proc/self/mounts)")
        group = cls.__new__(cls)
        group.version = version
        group.controllers = controllers
        group.paths = paths
        group._owned = False
        group._destroyed = False
        group._children = []
        group.name = next(iter(group.paths.values())).name
        return group

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"Cgroup({', '.join(map(repr, self.controllers))}, v{self.version}, {self.name!r})"

    @property
    def directories(self) -> list[Path]:
        """Each directory once (v2 has one for all controllers)."""
        return list(dict.fromkeys(self.paths.values()))

    def _file(self, controller: str, filename: str) -> Path:
        try:
            return self.paths[controller] / filename
        except KeyError:
            raise ValueError(
                f"{self!r} was not created with the {controller!r} controller"
            ) from None

    def _write(self, controller: str, filename: str, value: object) -> None:
        self._file(controller, filename).write_text(str(value))

    def set_memory_limit(self, nbytes: int, *, oom_kill: bool = True) -> None:
        """Limit memory with no escape to swap.

        ``oom_kill=False`` (v1 only) disables the OOM killer: a member faulting past the limit
        then blocks, and kernel allocations (fork, threads, pipes) fail -- a stress recipe.
        """
        if self.version == 2:
            if not oom_kill:
                _skip("cgroup v2 has no switch to turn the OOM killer off (v1 memory.oom_control)")
            self._write("memory", "memory.max", nbytes)
            swap = self._file("memory", "memory.swap.max")
            if swap.exists():
                swap.write_text("0")
            return
        limit = self._file("memory", "memory.limit_in_bytes")
        memsw = self._file("memory", "memory.memsw.limit_in_bytes")
        files = [limit]
        if memsw.exists():
            # memsw must stay >= limit at every moment: lower the limit first, raise memsw first.
            files = [memsw, limit] if nbytes > int(limit.read_text()) else [limit, memsw]
        for file in files:
            file.write_text(str(nbytes))
        self._write("memory", "memory.oom_control", 0 if oom_kill else 1)

    def set_pids_max(self, n: int | str) -> None:
        """Cap threads plus processes in the group (``"max"`` lifts the cap)."""
        self._write("pids", "pids.max", n)

    def set_cpu_quota(self, cpus: float) -> None:
        """Allow ``cpus`` CPUs' worth of time per period (CFS quota)."""
        if cpus <= 0:
            raise ValueError(f"cpus must be > 0, got {cpus}")
        if self.version == 2:
            period = 100_000
            self._write("cpu", "cpu.max", f"{max(1000, round(cpus * period))} {period}")
            return
        period = int(self._file("cpu", "cpu.cfs_period_us").read_text())
        self._write("cpu", "cpu.cfs_quota_us", max(1000, round(cpus * period)))

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into the group under every controller."""
        for directory in self.directories:
            (directory / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        """The processes in the group (not threads)."""
        return sorted(set().union(*(_members(d) for d in self.directories)))

    def pids_current(self) -> int:
        """What the pids controller charges: threads, processes and unreaped zombies."""
        return int(self._file("pids", "pids.current").read_text())

    def _live_tasks(self) -> int:
        tasks = "cgroup.threads" if self.version == 2 else "tasks"
        return len(self._file("pids", tasks).read_text().split())

    def settle_pids(self, timeout: float = 5.0) -> int:
        """Wait until ``pids.current`` stops changing and no zombie is still charged; return it.

        A limit computed while exited children await their reaper would be too tight by that many.
        Returns the last value when ``timeout`` runs out.
        """
        deadline = time.monotonic() + timeout
        previous = None
        while True:
            current = self.pids_current()
            if current == previous and current == self._live_tasks():
                return current
            if time.monotonic() >= deadline:
                return current
            previous = current
            time.sleep(0.05)

    def oom_kills(self) -> int:
        """How many members the OOM killer has killed in this group."""
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        return parse_flat_keyed(self._file("memory", events).read_text()).get("oom_kill", 0)

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command that is inside the group before it executes its first instruction.

        The child writes ``0`` (itself) to every ``cgroup.procs`` between fork and exec, so even
        its interpreter's start-up is charged to the group. A ``preexec_fn`` given runs after.
        """
        targets = [os.fsencode(d / "cgroup.procs") for d in self.directories]
        then = kwargs.pop("preexec_fn", None)

        def enter() -> None:
            for target in targets:
                fd = os.open(target, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            if then is not None:
                then()

        process: subprocess.Popen[Any] = subprocess.Popen(args, preexec_fn=enter, **kwargs)
        self._children.append(process)
        return process

    def run_python(
        self, code: str, timeout: float = 60, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -c code`` inside the group and capture its output as text.

        ``env`` adds to this process's environment (see ``child_env``: the child can import
        ``tests.support``). It returns once the child has exited and its output is closed;
        members still holding the output a little after the child exited (a pool's orphaned
        workers) are SIGKILLed. If the child outlives ``timeout`` it is sent SIGABRT (the
        faulthandler prints every thread's traceback to its stderr), everything in the group is
        SIGKILLed, and ``subprocess.TimeoutExpired`` carries the output so far.
        """
        args = [sys.executable, "-c", code]
        process = self.popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(env),
        )
        deadline = time.monotonic() + timeout
        exited_at: float | None = None
        while True:
            try:
                out, err = process.communicate(timeout=0.1)
                return subprocess.CompletedProcess(args, process.returncode, out, err)
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if process.poll() is not None:
                    exited_at = exited_at or now
                    if now - exited_at > _OUTPUT_GRACE:
                        self.kill()
                elif now > deadline:
                    break
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=2)
        self.kill()
        out, err = process.communicate()
        raise subprocess.TimeoutExpired(args, timeout, output=out, stderr=err)

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the group and wait until none is left; the group stays.

        Killed processes leave ``cgroup.procs`` once they have exited (zombies included), so
        the group is really empty on return; raises ``RuntimeError`` if it is not by ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            _kill(self.directories)
            if not self.pids():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self!r} still holds {self.pids()} {timeout:.0f} s after SIGKILL"
                )
            time.sleep(0.01)

    def destroy(self) -> None:
        """SIGKILL everything inside, reap our own children, remove the directories.

        Idempotent; a handle from ``current()`` is never removed.
        """
        if not self._owned or self._destroyed:
            return
        with contextlib.suppress(RuntimeError):  # _kill_and_remove reports what stays busy
            self.kill()
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        _kill_and_remove(self.directories)
        self._destroyed = True


@contextlib.contextmanager
def pids_headroom(group: Cgroup, k: int) -> Iterator[None]:
    """Allow ``k`` more threads or processes than the group holds once it has settled.

    With 2 workers, k=1-2 fails the fork (``BlockingIOError``), k=4-5 a thread start inside the
    executor (``RuntimeError: can't start new thread``). ``pids.max`` is back to ``max`` after.
    """
    group.set_pids_max(group.settle_pids() + k)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            group.set_pids_max("max")
