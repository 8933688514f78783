"""What the runner moves around: batches of tasks, the batches in flight, and where tasks come
from (the caller's items, an :class:`Inbox` fed by ``Executor.submit``, or the requeue).

::

    items / Inbox ──▶ Feed.take(size) ──▶ Batch ──submit──▶ Flight (future, backend, record)
                         ▲                                     │ failed rung: not finished
                         └────────── Feed.requeue(batch) ◀─────┘
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..records import record

if TYPE_CHECKING:
    from ..backends.base import Backend
    from .report import Report, RungRecord

__all__ = ["Batch", "Events", "Feed", "Flight", "Flights", "Inbox", "Sizer"]

_MAX_BATCH = 10_000


@record
class Batch:
    """Tasks that travel together: their input indexes and items. ``suspect``: in flight when
    a worker process died, so it may be the cause (it runs alone before an in-process rung)."""

    indexes: list[int]
    items: list[Any]
    suspect: bool = False

    def __lt__(self, other: Batch) -> bool:
        return self.indexes[0] < other.indexes[0]


@record
class Flight:
    """A batch submitted to a backend, and the record of the rung that took it."""

    batch: Batch
    backend: Backend
    record: RungRecord
    tag: int = 0  # names the batch to the timeout watch


class Flights(dict[Future[Any], Flight]):
    """The batches in flight, by their future, on every backend of the run."""

    def on(self, backend: Backend | None) -> dict[int, tuple[Future[Any], Flight]]:
        """``backend``'s flights (``None``: every backend's) by tag."""
        return {
            f.tag: (future, f)
            for future, f in self.items()
            if backend is None or f.backend is backend
        }

    def busy(self, backend: Backend) -> bool:
        return any(f.backend is backend for f in self.values())

    def evacuate(self, backend: Backend, died: bool, feed: Feed, report: Report) -> int:
        """Move what ``backend`` has not finished to the requeue; return how many tasks.

        A batch running in a thread of ours cannot be stopped: it stays, an orphan, and its
        result is kept. One sent to another process may have started (at-least-once); if a
        worker ``died``, it may be the cause: it becomes a suspect.
        """
        moved = 0
        for future, flight in list(self.items()):
            if flight.backend is not backend:
                continue
            if future.done() and not future.cancelled() and future.exception() is None:
                continue  # finished: delivered with the orphans or by the next rung's waits
            if backend.in_process and not future.cancel() and not future.done():
                continue
            del self[future]
            batch = flight.batch
            if not backend.in_process:
                batch.suspect = batch.suspect or died
                report.rerun += len(batch.items)
            feed.requeue(batch)
            moved += len(batch.items)
        return moved

    def cancel(self, backend: Backend) -> bool:
        """Cancel ``backend``'s batches that have not started; True if some still run."""
        running = False
        for future, flight in list(self.items()):
            if flight.backend is backend and not future.cancel() and not future.done():
                running = True
        return running

    def cancel_all(self) -> None:
        for future in list(self):
            future.cancel()
        self.clear()


class Sizer:
    """Adaptive batch size: enough tasks per batch to hide the per-batch cost (IPC, pickling),
    few enough that every worker gets several batches."""

    def __init__(self, fixed: int | None, target: float, cap: int | None = None) -> None:
        self.fixed = fixed if fixed is None or cap is None else min(fixed, cap)
        self.target = target
        self.cap = _MAX_BATCH if cap is None else cap
        self.per_task: float | None = None
        self.last = 1

    def observe(self, tasks: int, elapsed: float) -> None:
        if tasks:
            sample = max(elapsed / tasks, 1e-7)
            self.per_task = sample if self.per_task is None else 0.7 * self.per_task + 0.3 * sample

    def size(self, workers: int, remaining: int | None) -> int:
        if self.fixed is not None:
            self.last = self.fixed  # the read-ahead window is counted in batches of this size
            return self.fixed
        if self.per_task is None:
            return 1
        ideal = max(1, min(int(self.target / self.per_task), self.cap))
        # With a known count, straight to the size the first measured task asks for: tiny
        # tasks do not ramp up through batches that each pay the per-batch cost, and the share
        # of what remains below bounds a wrong first sample. A stream grows at most fourfold a
        # step, so one early fast sample cannot hold back its next results behind a huge batch.
        size = min(ideal, 4 * self.last) if remaining is None else ideal
        if remaining is not None:
            # Several batches per worker, so the last ones do not leave workers idle; but not
            # a tail of tiny batches that each pay the per-batch cost.
            size = min(size, max(math.ceil(remaining / (4 * workers)), ideal // 4, 1))
        self.last = size
        return size


class Inbox:
    """A source that is fed while the run goes on (``Executor.submit``), read without blocking.

    ``listener`` (set by the runner) is called after every ``put`` and on ``close``, so the
    runner wakes for new work as it wakes for finished batches.
    """

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._closed = False
        self._lock = threading.Lock()
        self.listener: Callable[[None], None] = lambda _: None

    def put(self, item: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._items.append(item)
        self.listener(None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.listener(None)

    def take(self, n: int, accept: Callable[[Any], bool]) -> tuple[list[Any], bool]:
        """Up to ``n`` items that ``accept`` admits, and whether the inbox is closed and empty."""
        taken: list[Any] = []
        with self._lock:
            while self._items and len(taken) < n:
                item = self._items.popleft()
                if accept(item):
                    taken.append(item)
            return taken, self._closed and not self._items


class Feed:
    """Where the next batch comes from: requeued batches first, then new items, read lazily.

    In order, results wait for the earliest; ``expected`` is the next index to hand out, and
    new items are read only a window ahead of it, so one slow early batch cannot let finished
    later results pile up without end.
    """

    def __init__(
        self, items: Iterable[Any] | Inbox, sizer: Sizer, accept: Callable[[Any], bool]
    ) -> None:
        self.inbox = items if isinstance(items, Inbox) else None
        self.total = len(items) if isinstance(items, Sized) else None
        self._source: Iterator[Any] = iter(()) if isinstance(items, Inbox) else iter(items)
        self._sizer = sizer
        self._accept = accept
        self.requeued: list[Batch] = []
        self.next_index = 0
        self.expected = 0
        self.exhausted = self.total == 0  # nothing to do: no pool is started for it

    def take(self, workers: int, in_flight: int, ordered: bool) -> Batch | None:
        """The next batch for a rung of ``workers`` with room for ``in_flight`` batches."""
        if self.requeued:
            return self.requeued.pop(0)
        if self.exhausted:
            return None
        if ordered:
            window = 2 * in_flight * max(self._sizer.last, 1)
            if self.next_index - self.expected >= window:
                return None
        remaining = None if self.total is None else self.total - self.next_index
        size = self._sizer.size(workers, remaining)
        if self.inbox is not None:
            items, self.exhausted = self.inbox.take(size, self._accept)
            indexes = list(range(self.next_index, self.next_index + len(items)))
            self.next_index += len(items)
            return Batch(indexes, items) if items else None
        items = list(itertools.islice(self._source, size))
        self.exhausted = len(items) < size
        indexes = list(range(self.next_index, self.next_index + len(items)))
        self.next_index += len(items)
        return Batch(indexes, items) if items else None

    def in_order(
        self,
        chunks: Iterator[list[tuple[int, Any, bool]]],
        waiting: dict[int, tuple[Any, bool]],
    ) -> Iterator[list[tuple[int, Any, bool]]]:
        """Lists of outcomes (ascending indexes each) in input order; those that came early
        wait in ``waiting``."""
        for chunk in chunks:
            first = chunk[0][0]
            if not waiting and first == self.expected and chunk[-1][0] == first + len(chunk) - 1:
                self.expected += len(chunk)
                yield chunk  # next in line, without a gap: as it is
                continue
            for index, value, ok in chunk:
                waiting[index] = (value, ok)
            ready = []
            while self.expected in waiting:
                value, ok = waiting.pop(self.expected)
                ready.append((self.expected, value, ok))
                self.expected += 1
            if ready:
                yield ready

    def requeue(self, batch: Batch) -> None:
        """Run ``batch`` again, before any new item, in input order."""
        self.requeued.append(batch)
        self.requeued.sort()

    def take_suspects(self) -> list[Batch]:
        """Remove and return the suspect batches (they run alone before an in-process rung)."""
        suspects = [b for b in self.requeued if b.suspect]
        self.requeued = [b for b in self.requeued if not b.suspect]
        return suspects

    @property
    def has_suspects(self) -> bool:
        return any(b.suspect for b in self.requeued)


class Events:
    """What the runner blocks on, one queue: finished futures (their done-callbacks put them),
    ``None`` (the inbox has news) and exceptions (stop: raised where the runner waits)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Future[Any] | BaseException | None] = queue.SimpleQueue()

    def put(self, event: Future[Any] | BaseException | None) -> None:
        self._queue.put(event)

    def take(self, timeout: float) -> list[Future[Any] | None]:
        """What arrived, waiting up to ``timeout`` for the first (``[]``: nothing came)."""
        events: list[Future[Any] | BaseException | None] = []
        try:
            events.append(self._queue.get(timeout=timeout))
            while True:
                events.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        for event in events:
            if isinstance(event, BaseException):
                raise event
        return [e for e in events if not isinstance(e, BaseException)]

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` between rungs; a stop is raised at once, finished futures that
        arrive meanwhile (an orphan's) stay queued for :meth:`take`."""
        deadline = time.monotonic() + seconds
        kept: list[Future[Any] | None] = []
        try:
            while (left := deadline - time.monotonic()) > 0:
                kept += self.take(left)
        finally:
            for event in kept:
                if event is not None:
                    self._queue.put(event)
