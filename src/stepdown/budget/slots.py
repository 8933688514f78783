"""Slot files: opening them safely, locking them with ``flock``, and the records inside.

::

    one slot file (slot-N, or over-N for a guaranteed slot beyond the budget)

        free ──flock(LOCK_EX|LOCK_NB)──▶ held ──write record──▶ held, record visible
         ▲                                                         │
         ├──── truncate record, LOCK_UN, close ◀── release/shrink ─┤
         └──── the kernel drops the lock ◀──────── holder dies ────┘

Each slot is locked on its own open file description, so the kernel frees it when its holder
dies, however it dies. The holder writes a one-line JSON record (pid, start time, memory
reserved, label) for others to read without locking; a slot counts as held only while its lock
is held, whatever the file says. The directory is the caller's own (mode 0700, owner checked)
and no symbolic link in it is followed, so another user cannot plant or redirect slot files.

A forked child drops its copies of the slot descriptors at once (``os.register_at_fork``), so a
pool worker forked while slots were held does not keep them alive after its parent dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import stat
import threading

from ..errors import UsageError
from ..records import record
from .location import runtime_root

__all__ = [
    "HOLDINGS",
    "LABEL_MAX",
    "OPEN_READ",
    "OPEN_SLOT",
    "SLOT_FILE",
    "Held",
    "Holdings",
    "Record",
    "Slot",
    "check_memory",
    "drop",
    "free",
    "open_directory",
    "open_slot",
    "read_record",
    "refuse",
    "runtime_root",
    "slot_key",
    "write_record",
]

log = logging.getLogger("stepdown")

SLOT_FILE = re.compile(r"^(slot|over)-(\d{1,9})$")
_RECORD_MAX = 4096
LABEL_MAX = 200
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a slot's name must not block the open.
OPEN_SLOT = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Holdings:
    """This process's held slots, path -> descriptor, and the lock that guards them.

    flock already refuses a second open file description of a held file, even in the same
    process; the holdings let a pass skip our own slots without probing them, let status() tell
    ours from others', and keep one thread's LOCK_SH probes from making another thread's LOCK_EX
    fail. Reentrant, because a Grant's finalizer may run from garbage collection while this
    thread holds it.
    """

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.lock = threading.RLock()


HOLDINGS = Holdings()


def _before_fork() -> None:
    HOLDINGS.lock.acquire()


def _after_fork_in_parent() -> None:
    HOLDINGS.lock.release()


def _after_fork_in_child() -> None:
    # Closing (never unlocking: the lock is shared with the parent's descriptor) means only the
    # parent keeps the slots alive.
    for fd in HOLDINGS.fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    HOLDINGS.fds.clear()
    HOLDINGS.lock = threading.RLock()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


@record
class Slot:
    name: str  # "" for a guaranteed slot no file could back
    path: str
    fd: int


@record(frozen=True)
class Held:
    pid: int | None
    mine: bool


@record(frozen=True)
class Record:
    pid: int | None = None
    label: str = ""
    memory: int = 0
    started: float | None = None


def write_record(slot: Slot, memory: int, label: str, started: float) -> None:
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


def read_record(fd: int) -> Record:
    """Whatever another process left in a slot file; garbage reads as an unknown holder."""
    try:
        line = os.pread(fd, _RECORD_MAX, 0).split(b"\n", 1)[0]
        data = json.loads(line)
    except (OSError, ValueError, RecursionError):
        return Record()
    if not isinstance(data, dict):
        return Record()

    def number(key: str) -> int | float | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return value if math.isfinite(value) and value >= 0 else None

    pid, memory, started = number("pid"), number("memory"), number("started")
    label = data.get("label")
    return Record(
        pid=pid if isinstance(pid, int) and pid > 0 else None,
        label=label[:LABEL_MAX] if isinstance(label, str) else "",
        memory=int(memory or 0),
        started=float(started) if started is not None else None,
    )


def drop(slot: Slot) -> None:
    """Free one slot: truncate first, so no stale record outlives the hold."""
    HOLDINGS.fds.pop(slot.path, None)
    if slot.fd < 0:
        return
    with contextlib.suppress(OSError):
        os.ftruncate(slot.fd, 0)
    with contextlib.suppress(OSError):
        fcntl.flock(slot.fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(slot.fd)
    slot.fd = -1


def free(slots: list[Slot], pid: int) -> None:
    # In a forked child the descriptors were already closed by the at-fork hook, and the
    # numbers may since name other files.
    if os.getpid() != pid:
        return
    with HOLDINGS.lock:
        while slots:
            drop(slots.pop())


def check_memory(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"memory_per_slot must be a byte count >= 0, not {value!r}")
    return value


def refuse(path: str, problem: str, fix: str) -> UsageError:
    return UsageError(f"host budget: {path} {problem}; {fix}")


def open_directory(name: str, dir_fd: int | None, shown: str, create: bool) -> int | None:
    """Open one directory level of the budget, refusing links, other owners and open modes."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise refuse(
                shown,
                f"cannot be created ({exc.strerror})",
                "point XDG_RUNTIME_DIR or TMPDIR at a writable directory, or disable the budget",
            ) from None
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        if create:
            raise refuse(shown, "vanished while being opened", "try again") from None
        return None
    except OSError as exc:
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
                raise refuse(
                    shown, "is a symbolic link", "stepdown does not follow links here; remove it"
                ) from None
        if exc.errno == errno.ENOTDIR:
            raise refuse(shown, "is not a directory", "remove it") from None
        raise refuse(shown, f"cannot be opened ({exc.strerror})", "check its permissions") from None
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
        raise refuse(shown, problem, fix)
    return fd


def open_slot(dir_fd: int, name: str, shown: str, flags: int) -> int | None:
    """A descriptor of one slot file, or ``None`` when it is missing or cannot be opened."""
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refuse(
                shown, "is a symbolic link", "stepdown does not follow links here; remove it"
            ) from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise refuse(shown, "is not a regular file", "remove it") from None
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
        raise refuse(shown, problem, "remove it")
    return fd


def slot_key(name: str) -> tuple[int, int]:
    match = SLOT_FILE.match(name)
    assert match is not None
    return (match.group(1) == "over", int(match.group(2)))
