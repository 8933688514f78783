"""The host budget: worker slots and memory reservations shared by every instance on one host.

::

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

How: each slot is a file in ``<runtime>/<name>/`` held with ``flock``, so the kernel frees it
when its holder dies, however it dies; the files, their records and the safety checks on them
are :mod:`.slots`'. A grant belongs to the process that acquired it (:mod:`.grant`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import random
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..planning.resources import tree_rss
from ..units import shown
from .grant import Grant
from .location import Location, locate, runtime_root
from .settings import ENV_SIZE, MAX_SLOTS, host_workers
from .slots import (
    HOLDINGS,
    LABEL_MAX,
    OPEN_READ,
    OPEN_SLOT,
    SLOT_FILE,
    Held,
    Slot,
    check_memory,
    drop,
    open_directory,
    open_slot,
    read_record,
    slot_key,
    write_record,
)
from .status import BudgetStatus, SlotStatus, grant_line

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["DEFAULT_NAME", "ENV_SIZE", "Budget", "runtime_root"]

log = logging.getLogger("stepdown")

DEFAULT_NAME = "default"

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_OVER_MAX = 4096


class Budget:
    """A host-wide budget of ``size`` worker slots (at most :data:`MAX_SLOTS`) in
    ``<root>/<name>/``.

    ``size`` is usually the CPUs the caller measured (cgroup-aware); see :meth:`from_env`.
    Budgets of other names never share slots; instances that use one name with different sizes
    share the slot files they have in common, each taking at most its own ``size``.

    Without ``root``, the root is found by :func:`~stepdown.budget.location.locate` from
    ``environ``; ``finding`` then says why it is not the usual place, and ``counting`` is False
    when no safe place was found: such a budget grants every slot asked and holds none.
    """

    def __init__(
        self,
        size: int,
        *,
        name: str = DEFAULT_NAME,
        root: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SLOTS:
            raise UsageError(
                f"a host budget needs a size of at least 1 slot and at most {MAX_SLOTS}, "
                f"not {shown(size)}"
            )
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError(
                f"a host budget name is letters, digits, '_', '-' and '.' (not first), "
                f"at most 100 characters, not {shown(name)}"
            )
        where = Location(os.path.abspath(os.fspath(root))) if root is not None else locate(environ)
        self.size = size
        self.name = name
        # Strings on a run's path; Path objects for a caller who asks (pathlib is ~2.5 ms of
        # a cold start's imports).
        self._root = where.root
        self._directory = os.path.join(where.root, name)
        self.finding = where.finding
        self.counting = where.usable

    @classmethod
    def from_env(
        cls,
        default_size: int,
        environ: Mapping[str, str] | None = None,
        *,
        name: str = DEFAULT_NAME,
        root: str | os.PathLike[str] | None = None,
    ) -> Budget:
        """A budget of ``STEPDOWN_HOST_WORKERS`` slots if set, else of ``default_size`` (at
        most :data:`MAX_SLOTS`).

        Pass the policy's ``budget.size`` when it has one, else the CPUs the caller measured
        (cgroup-aware): the environment beats a policy file, as everywhere in stepdown.
        """
        env = os.environ if environ is None else environ
        size = host_workers(env, min(max(1, default_size), MAX_SLOTS))
        return cls(size, name=name, root=root, environ=env)

    @property
    def root(self) -> Path:
        """The directory that holds the budgets."""
        from pathlib import Path

        return Path(self._root)

    @property
    def directory(self) -> Path:
        """This budget's own directory, in :attr:`root`."""
        from pathlib import Path

        return Path(self._directory)

    def __repr__(self) -> str:
        return f"Budget(size={self.size}, name={self.name!r}, directory={self._directory!r})"

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
        seconds until one is. With ``guaranteed=True`` (the sequential rung) a grant that
        would hold none holds one slot beyond the budget instead, marked ``over_budget``,
        because every instance must make progress. Raises :class:`UsageError` for bad
        arguments or an unsafe budget directory; never for what other instances left in their
        slot files.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UsageError(f"cannot ask for {n!r} slots: give a whole number >= 0")
        if guaranteed and n < 1:
            raise UsageError("a guaranteed grant asks for at least 1 slot")
        memory = check_memory(memory_per_slot)
        if (
            isinstance(wait, bool)
            or not isinstance(wait, (int, float))
            or not (0 <= wait < math.inf)
        ):
            raise UsageError(f"wait must be a number of seconds >= 0, not {wait!r}")
        label = label[:LABEL_MAX]
        if not self.counting:  # no safe place for slot files: run as if there were no budget
            return Grant.unheld(n, memory, label)
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
            log.info("budget: %s", grant_line(grant, holders, self.size))
        return grant

    def _take(
        self, n: int, memory: int, label: str, started: float
    ) -> tuple[list[Slot], dict[str, int | None]]:
        """One pass over the slots: lock up to ``n`` free ones.

        Also returns who holds each slot seen taken (for the log line). A slot whose lock fails
        is tried once more after a moment: another process's LOCK_SH probe of a free slot
        (``status()``) makes it look held for a few microseconds.
        """
        taken: list[Slot] = []
        holders: dict[str, int | None] = {}
        with HOLDINGS.lock:
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
                        if isinstance(seen, Slot):
                            taken.append(seen)
                            holders[name] = os.getpid()
                        elif isinstance(seen, Held):
                            holders[name] = seen.pid
                            if not seen.mine:
                                busy.append(name)
                    if len(taken) >= n or not busy or attempt:
                        break
                    names = busy
                    time.sleep(0.002)
                if log.isEnabledFor(logging.INFO):
                    for name in _slot_files(dir_fd):
                        over, index = slot_key(name)
                        if over or index >= self.size or name in holders:
                            continue
                        status = self._probe(dir_fd, name, f"{self._directory}/{name}")
                        if status is not None:
                            holders[name] = status.pid
            except BaseException:
                for slot in taken:
                    drop(slot)
                raise
            finally:
                os.close(dir_fd)
        return taken, holders

    def _try_lock(
        self, dir_fd: int, name: str, memory: int, label: str, started: float
    ) -> Slot | Held | None:
        """The slot, locked and recorded; or who holds it; or ``None`` if it cannot be used."""
        path = f"{self._directory}/{name}"
        if path in HOLDINGS.fds:
            return Held(os.getpid(), mine=True)
        fd = open_slot(dir_fd, name, path, OPEN_SLOT)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_record(fd).pid
            os.close(fd)
            return Held(holder, mine=False)
        except OSError as exc:
            os.close(fd)
            log.warning("budget: cannot lock %s (%s); not using this slot", path, exc.strerror)
            return None
        HOLDINGS.fds[path] = fd
        slot = Slot(name, path, fd)
        write_record(slot, memory, label, started)
        return slot

    def _take_over(self, memory: int, label: str, started: float) -> Slot:
        """A slot beyond the budget, in a file of its own so others see its reservation."""
        with HOLDINGS.lock:
            try:
                dir_fd = self._open_dir(create=True)
            except UsageError as exc:
                log.warning("%s; the guaranteed slot is not recorded", exc)
                return Slot("", "", -1)
            assert dir_fd is not None
            try:
                for k in range(_OVER_MAX):
                    seen = self._try_lock(dir_fd, f"over-{k}", memory, label, started)
                    if isinstance(seen, Slot):
                        return seen
                    if seen is None:
                        break
            except UsageError as exc:
                log.warning("%s; the guaranteed slot is not recorded", exc)
            finally:
                os.close(dir_fd)
        return Slot("", "", -1)

    # ---- reading ----------------------------------------------------------------------

    def _open_dir(self, create: bool) -> int | None:
        root_fd = open_directory(self._root, None, self._root, create)
        if root_fd is None:
            return None
        try:
            return open_directory(self.name, root_fd, self._directory, create)
        finally:
            os.close(root_fd)

    def _probe(self, dir_fd: int, name: str, path: str) -> SlotStatus | None:
        """The slot's holder, or ``None`` if it is free: only the lock decides, not the file."""
        over = name.startswith("over-")
        own = HOLDINGS.fds.get(path)
        if own is not None:
            record = read_record(own)
            return SlotStatus(
                name, os.getpid(), record.label, record.memory, record.started, over, mine=True
            )
        fd = open_slot(dir_fd, name, path, OPEN_READ)
        if fd is None:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                record = read_record(fd)
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
        with HOLDINGS.lock:
            dir_fd = self._open_dir(create=False) if self.counting else None
            if dir_fd is not None:
                try:
                    for name in _slot_files(dir_fd):
                        seen = self._probe(dir_fd, name, f"{self._directory}/{name}")
                        if seen is not None:
                            held.append(seen)
                finally:
                    os.close(dir_fd)
        return BudgetStatus(self.name, self._directory, self.size, tuple(held))

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
            "directory": self._directory,
            "size": self.size,
            "counting": self.counting,
            "finding": self.finding,
            "status": None,
            "error": None,
        }
        try:
            out["status"] = self.status().to_dict()
        except UsageError as exc:
            out["error"] = str(exc)
        return out


def _slot_files(dir_fd: int) -> list[str]:
    """The slot files in the directory, in order: only a file that exists can be held, so a
    pass is as long as the files there, not as the budget's size."""
    with contextlib.suppress(OSError):
        return sorted((n for n in os.listdir(dir_fd) if SLOT_FILE.match(n)), key=slot_key)
    return []
