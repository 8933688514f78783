"""Per-task timeouts: where each running task started, and which ones ran over.

Workers say which task they are on (see :mod:`.batch`): a worker process rewrites its file in a
private directory of this run at each task; an in-process batch calls :meth:`Timeouts.note`.
The runner asks :meth:`Timeouts.overdue` as it waits, and stops what ran over: it kills the
worker process (the pool is then replaced), or, in-process, abandons the task.

Worker processes keep their file without a timeout too, written only as each batch starts and
ends: :meth:`Timeouts.working` tells the watchdog whether a pool whose workers are all alive is
busy or stuck (:mod:`.decide`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Container, Hashable, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, NamedTuple

from .flights import Batch, Feed, Flight
from .watching import IDLE, WATCH_RECORD, Watch

if TYPE_CHECKING:
    from .report import Report

__all__ = ["Overdue", "Timeouts"]

log = logging.getLogger("stepdown")


class Overdue(NamedTuple):
    """A task that ran over: its batch's tag, its position in the batch, and the worker
    process running it (``None``: in the caller's process)."""

    tag: int
    position: int
    pid: int | None


class Timeouts:
    """The running tasks of one run, and the deadline each is held to (``seconds``)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds or 0.0
        self.on = seconds is not None
        self._dir: str | None = None
        self._running: dict[int, tuple[int, float]] = {}
        self._abandoned: set[int] = set()

    @property
    def poll(self) -> float:
        """How often to look, at most: a quarter of the timeout (the lateness allowed)."""
        return min(0.2, max(self.seconds / 4, 0.01)) if self.on else 0.2

    def watch(self, in_process: bool) -> Watch | None:
        """What a batch is given to say where it is; ``None`` in-process without a timeout."""
        if in_process:
            return self.note if self.on else None
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="stepdown-watch-")
        return self._dir

    def note(self, tag: int, position: int) -> bool:
        """An in-process batch starts task ``position`` (-1: it ended); False: stop it."""
        if tag in self._abandoned:
            return False
        if position < 0:
            self._running.pop(tag, None)
        else:
            self._running[tag] = (position, time.monotonic())
        return True

    @property
    def abandoned(self) -> bool:
        """Whether a task was abandoned in-process (its thread cannot be joined)."""
        return bool(self._abandoned)

    def abandon(self, tag: int) -> None:
        """The batch ``tag`` runs on in a thread we cannot stop: let it do no more."""
        self._abandoned.add(tag)
        self._running.pop(tag, None)

    def overdue(self, tags: Container[int]) -> list[Overdue]:
        """The tasks of the batches ``tags`` that have run longer than the timeout."""
        if not self.on:
            return []
        now = time.monotonic()
        found = [
            Overdue(tag, position, None)
            for tag, (position, started) in list(self._running.items())
            if tag in tags and now - started > self.seconds
        ]
        for pid, (tag, position, started) in self._files():
            if position >= 0 and tag in tags and now - started > self.seconds:
                found.append(Overdue(tag, position, pid))
        return found

    def working(self, pids: Iterable[int]) -> tuple[bool, Hashable]:
        """Whether one of the worker processes ``pids`` is in a task or the initializer, and
        what their files say (it changes whenever one starts or ends a batch)."""
        records = dict(self._files())
        seen = tuple((pid, records.get(pid)) for pid in sorted(pids))
        return any(r is not None and r[1] != IDLE for _, r in seen), seen

    def youngest(self, pids: Iterable[int]) -> int | None:
        """Of the worker processes ``pids``, the one whose task (or batch) started last."""
        records = dict(self._files())
        running = [(r[2], pid) for pid in pids if (r := records.get(pid)) and r[1] >= 0]
        return max(running)[1] if running else None

    def stop(
        self, flights: Mapping[int, tuple[Future[Any], Flight]], feed: Feed, report: Report
    ) -> list[tuple[Future[Any], int]]:
        """Stop every task of ``flights`` (by tag) that ran over: kill its worker process, or
        abandon it in-process; requeue the rest of its batch. Returns each stopped batch's
        future and the stopped task's index (the runner hands out its ``TaskTimeout``)."""
        stopped = []
        for tag, position, pid in self.overdue(flights):
            future, flight = flights[tag]
            batch = flight.batch
            if pid is None:
                self.abandon(tag)
                what = "it cannot be stopped in-process: abandoned, still running"
            else:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                self.forget(pid)
                what = f"its worker (pid {pid}) was killed"
            # The others of its batch run again: in another process their results die with
            # the worker; in-process they wait behind the task that does not return.
            others = [p for p in range(len(batch.items)) if p != position]
            if others:
                report.rerun += len(others)
                feed.requeue(
                    Batch([batch.indexes[p] for p in others], [batch.items[p] for p in others])
                )
            report.timeouts += 1
            flight.record.finished += 1
            index = batch.indexes[position]
            log.warning(
                "task %d ran longer than task_timeout=%g s on %s; %s; %d other task%s of its "
                "batch run again",
                index,
                self.seconds,
                flight.backend.label,
                what,
                len(others),
                "" if len(others) == 1 else "s",
            )
            stopped.append((future, index))
        return stopped

    def _files(self) -> list[tuple[int, tuple[int, int, float]]]:
        if self._dir is None:
            return []
        read = []
        for name in os.listdir(self._dir):
            try:
                with open(os.path.join(self._dir, name), "rb") as f:
                    data = f.read(WATCH_RECORD.size)
                read.append((int(name), WATCH_RECORD.unpack(data)))
            except (OSError, ValueError, struct.error):  # just created, or not ours
                continue
        return read

    def forget(self, pid: int) -> None:
        """The worker ``pid`` is gone: its file says nothing any more."""
        if self._dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._dir, str(pid)))

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
