"""The host budget: worker slots and memory reservations shared by every instance on one host.

::

    one slot file (slot-N, or over-N for a guaranteed slot beyond the budget)

        free ──flock(LOCK_EX|LOCK_NB)──▶ held ──write record──▶ held, record visible
         ▲                                                         │
         ├──── truncate record, LOCK_UN, close ◀── release/shrink ─┤
         └──── the kernel drops the lock ◀──────── holder dies ────┘

    acquire(n)

        pass over slot-0 .. slot-(size-1) ──▶ k >= 1, or no wait left ──▶ Grant(k)
             ▲                      │ k == 0, wait left      │ k == 0 and guaranteed
             └─ jittered sleep ◀────┘                        ▼
                                                  first free over-N ──▶ Grant(1, over_budget)

Why: eight instances of a scoring job started together in one memory-capped container each see
the same CPUs and the same free memory, each start the same pool, and the OOM killer takes them
(stepping down to threads only moves the tasks' memory into the parents). A shared budget makes
them degrade by design instead: an instance granted fewer slots runs fewer workers, one granted
none steps down or waits, and the planner subtracts what the others have reserved.

How: each slot is a file in ``<runtime>/<name>/`` locked with ``flock`` on its own open file
description, so the kernel frees it when its holder dies, however it dies. The holder writes a
one-line JSON record into the file (pid, start time, memory reserved, label) for others to read
without locking; a slot counts as held only while its lock is held, whatever the file says.
The directory is the caller's own (mode 0700, owner checked) and no symbolic link in it is
followed, so another user cannot plant or redirect slot files.

A grant belongs to the process that acquired it. A forked child drops its copies of the slot
descriptors at once (``os.register_at_fork``), so a pool worker forked while slots were held does
not keep them alive after its parent dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import random
import re
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import UsageError
from .resources import tree_rss

__all__ = [
    "DEFAULT_NAME",
    "ENV_SIZE",
    "Budget",
    "BudgetStatus",
    "Grant",
    "SlotStatus",
    "runtime_root",
]

log = logging.getLogger("stepdown")

ENV_SIZE = "STEPDOWN_HOST_WORKERS"
DEFAULT_NAME = "default"

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_SLOT_FILE = re.compile(r"^(slot|over)-(\d{1,9})$")
_RECORD_MAX = 4096
_LABEL_MAX = 200
_OVER_MAX = 4096
_PIDS_SHOWN = 8
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a slot's name must not block the open.
_OPEN_SLOT = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# This process's held slots, path -> descriptor. flock already refuses a second open file
# description of a held file, even in the same process; the registry lets a pass skip our own
# slots without probing them, lets status() tell ours from others', and keeps one thread's
# LOCK_SH probes from making another thread's LOCK_EX fail. Reentrant, because a Grant's
# finalizer may run from garbage collection while this thread holds it.
_registry: dict[str, int] = {}
_lock = threading.RLock()


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    # Closing (never unlocking: the lock is shared with the parent's descriptor) means only the
    # parent keeps the slots alive.
    global _lock
    for fd in _registry.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _registry.clear()
    _lock = threading.RLock()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def runtime_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where budgets live: ``$XDG_RUNTIME_DIR/stepdown``, else ``<tempdir>/stepdown-<uid>``.

    ``XDG_RUNTIME_DIR`` is used only when it is an absolute path to a directory of the current
    user: ``sudo`` often keeps another user's, and budgets must not land there.
    """
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
        except OSError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                return Path(xdg) / "stepdown"
    return Path(tempfile.gettempdir()) / f"stepdown-{os.geteuid()}"


@dataclass(frozen=True)
class SlotStatus:
    """One held slot. ``pid`` is ``None`` when its record is unreadable (held by "unknown")."""

    slot: str
    pid: int | None
    label: str
    memory: int
    started: float | None
    over_budget: bool
    mine: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "pid": self.pid,
            "label": self.label,
            "memory": self.memory,
            "started": self.started,
            "over_budget": self.over_budget,
            "mine": self.mine,
        }


@dataclass(frozen=True)
class BudgetStatus:
    """The held slots of a budget at one moment; free slots are not listed."""

    name: str
    directory: str
    size: int
    held: tuple[SlotStatus, ...]

    @property
    def held_in_budget(self) -> int:
        """Held slots that count against ``size`` (guaranteed slots beyond it do not)."""
        return sum(1 for s in self.held if not s.over_budget)

    @property
    def free(self) -> int:
        return max(0, self.size - self.held_in_budget)

    @property
    def reserved_memory(self) -> int:
        """Memory reserved by every holder, this process included."""
        return sum(s.memory for s in self.held)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(sorted({s.pid for s in self.held if s.pid is not None}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "directory": self.directory,
            "size": self.size,
            "held": self.held_in_budget,
            "free": self.free,
            "over_budget": sum(1 for s in self.held if s.over_budget),
            "reserved_memory": self.reserved_memory,
            "slots": [s.to_dict() for s in self.held],
        }


@dataclass
class _Slot:
    name: str  # "" for a guaranteed slot no file could back
    path: str
    fd: int


@dataclass(frozen=True)
class _Held:
    pid: int | None
    mine: bool


@dataclass(frozen=True)
class _Record:
    pid: int | None = None
    label: str = ""
    memory: int = 0
    started: float | None = None


def _write_record(slot: _Slot, memory: int, label: str, started: float) -> None:
    """Write first, then cut the tail: a reader never sees an empty file for a held slot.

    Readers take only the first line, so a longer old record's tail does no harm meanwhile.
    A failed write (a full disk) leaves the slot held by "unknown", which is still safe.
    """
    if slot.fd < 0:
        return
    record = {"pid": os.getpid(), "started": started, "memory": memory, "label": label}
    data = json.dumps(record).encode() + b"\n"
    try:
        os.pwrite(slot.fd, data, 0)
        os.ftruncate(slot.fd, len(data))
    except OSError as exc:
        log.debug("budget: cannot write the record of %s: %s", slot.path, exc)


def _read_record(fd: int) -> _Record:
    """Whatever another process left in a slot file; garbage reads as an unknown holder."""
    try:
        line = os.pread(fd, _RECORD_MAX, 0).split(b"\n", 1)[0]
        data = json.loads(line)
    except (OSError, ValueError, RecursionError):
        return _Record()
    if not isinstance(data, dict):
        return _Record()

    def number(key: str) -> int | float | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return value if math.isfinite(value) and value >= 0 else None

    pid, memory, started = number("pid"), number("memory"), number("started")
    label = data.get("label")
    return _Record(
        pid=pid if isinstance(pid, int) and pid > 0 else None,
        label=label[:_LABEL_MAX] if isinstance(label, str) else "",
        memory=int(memory or 0),
        started=float(started) if started is not None else None,
    )


def _drop(slot: _Slot) -> None:
    """Free one slot: truncate first, so no stale record outlives the hold."""
    _registry.pop(slot.path, None)
    if slot.fd < 0:
        return
    with contextlib.suppress(OSError):
        os.ftruncate(slot.fd, 0)
    with contextlib.suppress(OSError):
        fcntl.flock(slot.fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(slot.fd)
    slot.fd = -1


def _free(slots: list[_Slot], pid: int) -> None:
    # In a forked child the descriptors were already closed by the at-fork hook, and the
    # numbers may since name other files.
    if os.getpid() != pid:
        return
    with _lock:
        while slots:
            _drop(slots.pop())


class Grant:
    """Slots granted by :meth:`Budget.acquire`; a context manager that frees them on exit.

    ``count`` is the number held now. ``over_budget`` marks the one slot a guaranteed acquire
    takes beyond the budget so the instance can make progress. Release as soon as the rung ends
    or steps down; :meth:`release` is idempotent and also runs when the grant is collected.
    In a forked child a grant is inert: only the process that acquired it can give slots back.
    """

    def __init__(
        self,
        slots: list[_Slot],
        *,
        asked: int,
        memory_per_slot: int,
        label: str,
        over_budget: bool,
        started: float,
    ) -> None:
        self.asked = asked
        self.over_budget = over_budget
        self._slots = slots
        self._memory = memory_per_slot
        self._label = label
        self._started = started
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, _free, slots, self._pid)

    @property
    def count(self) -> int:
        return len(self._slots)

    @property
    def memory_per_slot(self) -> int:
        return self._memory

    @property
    def label(self) -> str:
        return self._label

    @property
    def released(self) -> bool:
        """True once :meth:`release` ran (or the grant was collected)."""
        return not self._finalizer.alive

    @property
    def slots(self) -> tuple[str, ...]:
        """The slot files held, e.g. ``("slot-0", "slot-3")``."""
        return tuple(s.name for s in self._slots)

    def shrink(self, to: int) -> None:
        """Give back all but ``to`` slots (on a step-down to fewer workers)."""
        if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to <= self.count:
            raise UsageError(
                f"a grant of {self.count} slots can shrink to 0..{self.count}, not {to!r}"
            )
        if os.getpid() != self._pid:
            return
        with _lock:
            while len(self._slots) > to:
                _drop(self._slots.pop())

    def update(self, *, memory_per_slot: int | None = None, label: str | None = None) -> None:
        """Rewrite the records: a measured reservation, or the label of the rung now running."""
        if memory_per_slot is not None:
            self._memory = _check_memory(memory_per_slot)
        if label is not None:
            self._label = label[:_LABEL_MAX]
        if os.getpid() != self._pid:
            return
        with _lock:
            for slot in self._slots:
                _write_record(slot, self._memory, self._label, self._started)

    def release(self) -> None:
        self._finalizer()

    def to_dict(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "count": self.count,
            "over_budget": self.over_budget,
            "memory_per_slot": self._memory,
            "label": self._label,
            "slots": list(self.slots),
        }

    def __enter__(self) -> Grant:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        over = ", over budget" if self.over_budget else ""
        return f"<Grant {self.count} of {self.asked} slot(s){over} label={self._label!r}>"


def _check_memory(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"memory_per_slot must be a byte count >= 0, not {value!r}")
    return value


def _refuse(path: str, problem: str, fix: str) -> UsageError:
    return UsageError(f"host budget: {path} {problem}; {fix}")


def _open_directory(name: str, dir_fd: int | None, shown: str, create: bool) -> int | None:
    """Open one directory level of the budget, refusing links, other owners and open modes."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _refuse(
                shown,
                f"cannot be created ({exc.strerror})",
                "point XDG_RUNTIME_DIR or TMPDIR at a writable directory, or disable the budget",
            ) from None
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        if create:
            raise _refuse(shown, "vanished while being opened", "try again") from None
        return None
    except OSError as exc:
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
                raise _refuse(
                    shown, "is a symbolic link", "stepdown does not follow links here; remove it"
                ) from None
        if exc.errno == errno.ENOTDIR:
            raise _refuse(shown, "is not a directory", "remove it") from None
        raise _refuse(
            shown, f"cannot be opened ({exc.strerror})", "check its permissions"
        ) from None
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
        fix = "another user may be trying to steer this budget; remove it or pick another name"
    elif st.st_mode & 0o022:
        problem = f"is group- or world-writable (mode {stat.S_IMODE(st.st_mode):o})"
        fix = f"run: chmod 700 {shown}"
    if problem is not None:
        os.close(fd)
        raise _refuse(shown, problem, fix)
    return fd


def _open_slot(dir_fd: int, name: str, shown: str, flags: int) -> int | None:
    """A descriptor of one slot file, or ``None`` when it is missing or cannot be opened."""
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(
                shown, "is a symbolic link", "stepdown does not follow links here; remove it"
            ) from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise _refuse(shown, "is not a regular file", "remove it") from None
        log.warning("budget: cannot open %s (%s); not using this slot", shown, exc.strerror)
        return None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if problem is not None:
        os.close(fd)
        raise _refuse(shown, problem, "remove it")
    return fd


def _slot_key(name: str) -> tuple[int, int]:
    match = _SLOT_FILE.match(name)
    assert match is not None
    return (match.group(1) == "over", int(match.group(2)))


class Budget:
    """A host-wide budget of ``size`` worker slots in ``<root>/<name>/``.

    ``size`` is usually the CPUs the caller measured (cgroup-aware); see :meth:`from_env`.
    Budgets of other names never share slots; instances that use one name with different sizes
    share the slot files they have in common, each taking at most its own ``size``.
    """

    def __init__(
        self, size: int, *, name: str = DEFAULT_NAME, root: str | os.PathLike[str] | None = None
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UsageError(f"a host budget needs a size of at least 1 slot, not {size!r}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError(
                f"a host budget name is letters, digits, '_', '-' and '.' (not first), "
                f"at most 100 characters, not {name!r}"
            )
        self.size = size
        self.name = name
        self.root = Path(root).absolute() if root is not None else runtime_root()
        self.directory = self.root / name

    @classmethod
    def from_env(
        cls,
        default_size: int,
        environ: Mapping[str, str] | None = None,
        *,
        name: str = DEFAULT_NAME,
        root: str | os.PathLike[str] | None = None,
    ) -> Budget:
        """A budget of ``STEPDOWN_HOST_WORKERS`` slots if set, else of ``default_size``.

        Pass the policy's ``budget.size`` when it has one, else the CPUs the caller measured
        (cgroup-aware): the environment beats a policy file, as everywhere in stepdown.
        """
        env = os.environ if environ is None else environ
        text = env.get(ENV_SIZE, "").strip()
        size = max(1, default_size)
        if text:
            try:
                size = int(text)
            except ValueError:
                size = 0
            if size < 1:
                raise UsageError(f"{ENV_SIZE} must be a whole number of slots >= 1, not {text!r}")
        return cls(size, name=name, root=root if root is not None else runtime_root(env))

    def __repr__(self) -> str:
        return f"Budget(size={self.size}, name={self.name!r}, directory={str(self.directory)!r})"

    # ---- granting ---------------------------------------------------------------------

    def acquire(
        self,
        n: int,
        *,
        memory_per_slot: int = 0,
        label: str = "",
        wait: float = 0.0,
        guaranteed: bool = False,
    ) -> Grant:
        """Take up to ``n`` free slots now; the grant may hold fewer, or none.

        With ``wait > 0`` and no slot free, polls with jittered sleeps for up to ``wait``
        seconds until one is. With ``guaranteed=True`` (the sequential rung) a grant that would
        hold none holds one slot beyond the budget instead, marked ``over_budget``, because
        every instance must make progress. Raises :class:`UsageError` for bad arguments or an
        unsafe budget directory; never for what other instances left in their slot files.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UsageError(f"cannot ask for {n!r} slots: give a whole number >= 0")
        if guaranteed and n < 1:
            raise UsageError("a guaranteed grant asks for at least 1 slot")
        memory = _check_memory(memory_per_slot)
        if (
            isinstance(wait, bool)
            or not isinstance(wait, (int, float))
            or not (0 <= wait < math.inf)
        ):
            raise UsageError(f"wait must be a number of seconds >= 0, not {wait!r}")
        label = label[:_LABEL_MAX]
        deadline = time.monotonic() + wait
        delay = 0.01
        waiting = False
        while True:
            started = time.time()
            slots, holders = self._take(n, memory, label, started)
            left = deadline - time.monotonic()
            if slots or n == 0 or left <= 0:
                break
            if not waiting:
                waiting = True
                log.info(
                    "budget: all %d worker slots are held; %s waits up to %.0f s for one",
                    self.size,
                    label or "this rung",
                    left,
                )
            time.sleep(min(left, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.1)
        over = False
        if not slots and guaranteed:
            slots = [self._take_over(memory, label, started)]
            over = True
        grant = Grant(
            slots, asked=n, memory_per_slot=memory, label=label, over_budget=over, started=started
        )
        if log.isEnabledFor(logging.INFO):
            self._log_grant(grant, holders)
        return grant

    def _take(
        self, n: int, memory: int, label: str, started: float
    ) -> tuple[list[_Slot], dict[str, int | None]]:
        """One pass over the slots: lock up to ``n`` free ones.

        Also returns who holds each slot seen taken (for the log line). A slot whose lock fails
        is tried once more after a moment: another process's LOCK_SH probe of a free slot
        (``status()``) makes it look held for a few microseconds.
        """
        taken: list[_Slot] = []
        holders: dict[str, int | None] = {}
        with _lock:
            dir_fd = self._open_dir(create=True)
            assert dir_fd is not None
            try:
                names = [f"slot-{i}" for i in range(self.size)]
                for attempt in range(2):
                    busy: list[str] = []
                    for name in names:
                        if len(taken) >= n:
                            break
                        seen = self._try_lock(dir_fd, name, memory, label, started)
                        if isinstance(seen, _Slot):
                            taken.append(seen)
                            holders[name] = os.getpid()
                        elif isinstance(seen, _Held):
                            holders[name] = seen.pid
                            if not seen.mine:
                                busy.append(name)
                    if len(taken) >= n or not busy or attempt:
                        break
                    names = busy
                    time.sleep(0.002)
                if log.isEnabledFor(logging.INFO):
                    for i in range(self.size):
                        name = f"slot-{i}"
                        if name not in holders:
                            status = self._probe(dir_fd, name, f"{self.directory}/{name}")
                            if status is not None:
                                holders[name] = status.pid
            except BaseException:
                for slot in taken:
                    _drop(slot)
                raise
            finally:
                os.close(dir_fd)
        return taken, holders

    def _try_lock(
        self, dir_fd: int, name: str, memory: int, label: str, started: float
    ) -> _Slot | _Held | None:
        """The slot, locked and recorded; or who holds it; or ``None`` if it cannot be used."""
        path = f"{self.directory}/{name}"
        if path in _registry:
            return _Held(os.getpid(), mine=True)
        fd = _open_slot(dir_fd, name, path, _OPEN_SLOT)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd).pid
            os.close(fd)
            return _Held(holder, mine=False)
        except OSError as exc:
            os.close(fd)
            log.warning("budget: cannot lock %s (%s); not using this slot", path, exc.strerror)
            return None
        _registry[path] = fd
        slot = _Slot(name, path, fd)
        _write_record(slot, memory, label, started)
        return slot

    def _take_over(self, memory: int, label: str, started: float) -> _Slot:
        """A slot beyond the budget, in a file of its own so others see its reservation."""
        with _lock:
            try:
                dir_fd = self._open_dir(create=True)
            except UsageError as exc:
                log.warning("%s; the guaranteed slot is not recorded", exc)
                return _Slot("", "", -1)
            assert dir_fd is not None
            try:
                for k in range(_OVER_MAX):
                    seen = self._try_lock(dir_fd, f"over-{k}", memory, label, started)
                    if isinstance(seen, _Slot):
                        return seen
                    if seen is None:
                        break
            except UsageError as exc:
                log.warning("%s; the guaranteed slot is not recorded", exc)
            finally:
                os.close(dir_fd)
        return _Slot("", "", -1)

    def _log_grant(self, grant: Grant, holders: dict[str, int | None]) -> None:
        held = len(holders)
        pids = sorted({pid for pid in holders.values() if pid is not None})
        if grant.over_budget:
            pids = sorted({*pids, os.getpid()})
        shown = ", ".join(map(str, pids[:_PIDS_SHOWN])) + (
            ", ..." if len(pids) > _PIDS_SHOWN else ""
        )
        by = f" by pids {shown}" if pids else ""
        over = " over the budget" if grant.over_budget else ""
        plural = "" if grant.asked == 1 else "s"
        log.info(
            "budget: asked for %d worker slot%s, granted %d%s (%d of %d held%s)",
            grant.asked,
            plural,
            grant.count,
            over,
            held,
            self.size,
            by,
        )

    # ---- reading ----------------------------------------------------------------------

    def _open_dir(self, create: bool) -> int | None:
        root_fd = _open_directory(str(self.root), None, str(self.root), create)
        if root_fd is None:
            return None
        try:
            return _open_directory(self.name, root_fd, str(self.directory), create)
        finally:
            os.close(root_fd)

    def _probe(self, dir_fd: int, name: str, path: str) -> SlotStatus | None:
        """The slot's holder, or ``None`` if it is free: only the lock decides, not the file."""
        over = name.startswith("over-")
        own = _registry.get(path)
        if own is not None:
            record = _read_record(own)
            return SlotStatus(
                name, os.getpid(), record.label, record.memory, record.started, over, mine=True
            )
        fd = _open_slot(dir_fd, name, path, _OPEN_READ)
        if fd is None:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                record = _read_record(fd)
                return SlotStatus(
                    name, record.pid, record.label, record.memory, record.started, over, mine=False
                )
            except OSError:
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def status(self) -> BudgetStatus:
        """Who holds which slot now. Reads without taking any slot; creates nothing."""
        held: list[SlotStatus] = []
        with _lock:
            dir_fd = self._open_dir(create=False)
            if dir_fd is not None:
                try:
                    names = {f"slot-{i}" for i in range(self.size)}
                    with contextlib.suppress(OSError):
                        names.update(n for n in os.listdir(dir_fd) if _SLOT_FILE.match(n))
                    for name in sorted(names, key=_slot_key):
                        seen = self._probe(dir_fd, name, f"{self.directory}/{name}")
                        if seen is not None:
                            held.append(seen)
                finally:
                    os.close(dir_fd)
        return BudgetStatus(self.name, str(self.directory), self.size, tuple(held))

    def reserved_memory(self) -> int:
        """Memory other processes reserved and have not allocated yet.

        The planner subtracts it from the free memory the probe reports. What a holder already
        uses is in that figure already (the probe reads limit minus usage), so each holder's
        reservation counts only beyond what it and its children hold now (their RSS).
        """
        by_pid: dict[int | None, int] = {}
        for slot in self.status().held:
            if not slot.mine:
                by_pid[slot.pid] = by_pid.get(slot.pid, 0) + slot.memory
        return sum(max(0, reserved - tree_rss(pid)) for pid, reserved in by_pid.items())

    def to_dict(self) -> dict[str, Any]:
        """Settings and current status for ``stepdown doctor``; an unsafe directory is shown
        as ``error`` rather than raised."""
        out: dict[str, Any] = {
            "name": self.name,
            "directory": str(self.directory),
            "size": self.size,
            "status": None,
            "error": None,
        }
        try:
            out["status"] = self.status().to_dict()
        except UsageError as exc:
            out["error"] = str(exc)
        return out
