"""The runner's state machine: rungs in order, batches in flight, step down on failure.

::

        ┌───────────────┐  cannot start / unavailable   ┌─────────────┐
        │  next rung    ├──────────────────────────────▶│ record, skip│──┐
        └──────┬────────┘                                └─────────────┘  │
               │ started (or warm)                                        │
               ▼                                                          │
        ┌───────────────┐  every task delivered  ┌──────┐                 │
        │ fill & wait   ├───────────────────────▶│ done │                 │
        └──────┬────────┘                        └──────┘                 │
               │ submit raised / future failed / machinery dead too long  │
               ▼                                                          │
        ┌───────────────────────────────────────────────┐                 │
        │ keep finished batches; cancel or requeue the   │                 │
        │ rest (process rung: they become suspects);     ├─────────────────┘
        │ abandon the executor; log one WARNING line     │   next rung
        └───────────────────────────────────────────────┘

Before an in-process rung (thread, sequential) runs, suspects — tasks in flight when a worker
process died — are run alone in fresh processes (:mod:`.isolation`), so a task that kills its
process never kills the caller.

A batch running on an in-process rung that failed cannot be stopped and is not needed again:
it stays in flight as an orphan and its result is kept when it finishes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import pools
from .backend import Backend
from .batch import BatchResult, TaskException, dumps_function, run_batch
from .errors import (
    BackendUnavailable,
    Reason,
    RemoteTraceback,
    ResourceFailure,
    TaskCrashed,
    to_failure,
)
from .report import Report, RungRecord
from .rung import Rung

if TYPE_CHECKING:
    from .budget import Budget, Grant
    from .plan import Plan

__all__ = ["Engine", "Inbox", "Settings"]

log = logging.getLogger("stepdown")

Outcome = tuple[int, Any, bool]
# A generator of outcomes that finally returns the failure (if any) that ends the rung.
Stepping = Generator[Outcome, None, BaseException | None]

_POLL = 0.2
_MAX_BATCH = 10_000


@dataclass(frozen=True)
class Settings:
    """How a run behaves; the public functions fill it from their keyword arguments."""

    errors: str = "raise"
    ordered: bool = True
    stall_timeout: float = 3.0
    memory_error_steps_down: bool = True
    batch_size: int | None = None
    target_batch_seconds: float = 0.05
    reuse: bool = True


@dataclass
class _Batch:
    indexes: list[int]
    items: list[Any]
    suspect: bool = False

    def __lt__(self, other: _Batch) -> bool:
        return self.indexes[0] < other.indexes[0]


@dataclass
class _Flight:
    batch: _Batch
    backend: Backend
    record: RungRecord


class _Sizer:
    """Adaptive batch size: enough tasks per batch to hide the per-batch cost (IPC, pickling),
    few enough that every worker gets several batches."""

    def __init__(self, settings: Settings, total: int | None) -> None:
        self.fixed = settings.batch_size
        self.target = settings.target_batch_seconds
        self.total = total
        self.per_task: float | None = None
        self.last = 1

    def observe(self, tasks: int, elapsed: float) -> None:
        if tasks:
            sample = max(elapsed / tasks, 1e-7)
            self.per_task = sample if self.per_task is None else 0.7 * self.per_task + 0.3 * sample

    def size(self, workers: int, remaining: int | None) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_task is None:
            return 1
        # Grow at most fourfold a step, so one early fast sample cannot pull a huge batch.
        ideal = max(1, min(int(self.target / self.per_task), _MAX_BATCH))
        size = min(ideal, 4 * self.last)
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


@dataclass
class _Stall:
    since: float | None = None
    what: str = ""


@dataclass
class Engine:
    """Runs ``fn`` over ``items`` down ``rungs``; iterate it for ``(index, value, ok)``.

    ``rungs`` carry resolved worker counts. ``ok`` is False when ``value`` is the task's
    exception (only with ``errors="return"``; with ``"raise"`` it is raised instead).
    """

    fn: Callable[[Any], Any]
    items: Iterable[Any] | Inbox
    rungs: list[Rung]
    settings: Settings = field(default_factory=Settings)
    plan: Plan | None = None
    budget: Budget | None = None
    budget_wait: float = 0.0

    accept: Callable[[Any], bool] = field(default=lambda item: True)

    def __post_init__(self) -> None:
        self._inbox = self.items if isinstance(self.items, Inbox) else None
        total = len(self.items) if isinstance(self.items, Sized) else None
        self.report = Report(tasks=total or 0)
        if self.plan is not None:
            self.report.plan = f"profile {self.plan.profile}, {self.plan.rule.label}"
            for planned in self.plan.rungs:
                if planned.skipped:
                    self.report.rungs.append(
                        RungRecord(
                            label=planned.rung.label(),
                            backend=planned.rung.backend,
                            workers=0,
                            skipped=planned.reason,
                        )
                    )
        self._source: Iterator[Any] = (
            iter(()) if isinstance(self.items, Inbox) else iter(self.items)
        )
        # Finished futures arrive here from their done-callbacks (and None when the inbox has
        # news): one queue to block on, instead of installing waiters on every flight per step.
        self._events: queue.SimpleQueue[Future[Any] | None] = queue.SimpleQueue()
        if self._inbox is not None:
            self._inbox.listener = self._events.put
        self._next_index = 0
        # In order, results wait for the earliest: this is the next index to hand out.
        self._expected = 0
        self._exhausted = total == 0  # nothing to do: no pool is started for it
        self._requeue: list[_Batch] = []
        self._flights: dict[Future[Any], _Flight] = {}
        self._total = total
        self._delivered = 0
        self._sizer = _Sizer(self.settings, total)
        self._payload: bytes | None = None
        # The rung running now (for a caller that wants to watch or, in the demo, to kill one
        # of its workers); None before the first rung starts.
        self.backend: Backend | None = None
        self._grant: Grant | None = None
        self._start_method: str | None = None

    # ---- iteration -------------------------------------------------------------------

    def __iter__(self) -> Generator[Outcome, None, None]:
        started = time.perf_counter()
        try:
            if self.settings.ordered:
                yield from self._in_order(self._drive())
            else:
                yield from self._drive()
        finally:
            self.report.wall = time.perf_counter() - started
            self.report.tasks = max(self.report.tasks, self._next_index)
            self._cancel_all()

    def _in_order(self, outcomes: Iterator[Outcome]) -> Iterator[Outcome]:
        waiting: dict[int, tuple[Any, bool]] = {}
        for index, value, ok in outcomes:
            waiting[index] = (value, ok)
            while self._expected in waiting:
                value, ok = waiting.pop(self._expected)
                yield self._expected, value, ok
                self._expected += 1

    # ---- the ladder ------------------------------------------------------------------

    def _drive(self) -> Iterator[Outcome]:
        position = 0
        restarts = 0
        while position < len(self.rungs) and not self._finished():
            rung = self.rungs[position]
            last = position == len(self.rungs) - 1
            if rung.in_process and any(b.suspect for b in self._requeue):
                yield from self._isolate()
            backend = self._start(rung, position)
            if backend is None:
                position += 1
                continue
            self.backend = backend
            record = self.report.rungs[-1]
            rung_started = time.perf_counter()
            try:
                error = yield from self._run_on(backend, record, last)
            except BaseException:
                self._abort(backend, rung)
                raise
            finally:
                record.wall = time.perf_counter() - rung_started
                self._release_slots()
            if error is None:
                pools.release(backend, rung, self.settings.reuse)
                yield from self._drain_orphans()
                return
            failure = to_failure(error, backend.label, backend.dead_worker_exitcode())
            # One dead worker does not prove the machine cannot afford the pool (a passing
            # memory spike, a stray kill): a process rung gets a fresh pool `restarts` times.
            # A poison task kills the fresh pool too, and the ladder then goes on.
            restart = (
                not backend.in_process
                and failure.reason is Reason.WORKER_DIED
                and restarts < int(rung.options.get("restarts", 1))
            )
            if restart:
                restarts += 1
                self._step_down(backend, record, failure, "restarting it with a fresh pool")
                continue
            self._step_down(
                backend, record, failure, f"stepping down to {self._next_label(position)}"
            )
            position += 1
            restarts = 0
        if not self._finished():
            raise ResourceFailure(Reason.EXECUTOR_BROKEN, "every rung of the ladder failed")

    def _finished(self) -> bool:
        return self._exhausted and not self._requeue and not self._flights

    def _start(self, rung: Rung, position: int) -> Backend | None:
        workers = rung.workers or 1
        label = rung.label(workers)
        if self.budget is not None:
            workers = self._grant_slots(rung, workers, position)
            if not workers:
                return None
            label = rung.label(workers)
        record = RungRecord(label=label, backend=rung.backend, workers=workers)
        if self._grant is not None:
            record.slots = f"asked for {self._grant.asked}, granted {self._grant.count}"
        self.report.rungs.append(record)
        began = time.perf_counter()
        try:
            backend, warm = pools.acquire(
                rung, workers, self.settings.reuse, self.settings.stall_timeout
            )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self._release_slots()
            failure = to_failure(exc, label)
            record.failure = str(failure)
            record.reason = failure.reason.value
            if isinstance(failure, BackendUnavailable):
                record.skipped = failure.detail
            log.warning(
                "%s could not start: %s; stepping down to %s with %s",
                label,
                failure.detail or failure.reason.value,
                self._next_label(position),
                self._left(),
            )
            return None
        record.started = True
        record.reused = warm
        record.start_seconds = time.perf_counter() - began
        if not backend.in_process and self._payload is None:
            try:
                self._payload = dumps_function(self.fn)
            except Exception as exc:  # cloudpickle cannot ship it: only in-process rungs can
                pools.release(backend, rung, self.settings.reuse)
                record.started = False
                record.skipped = f"the function cannot be pickled: {type(exc).__name__}: {exc}"
                record.failure = record.skipped
                log.warning(
                    "%s skipped: %s; stepping down to %s",
                    label,
                    record.skipped,
                    self._next_label(position),
                )
                return None
        if not backend.in_process:
            self._start_method = rung.options.get("start_method")
        log.debug(
            "%s %s in %.3f s", label, "reused warm" if warm else "started", record.start_seconds
        )
        return backend

    def _grant_slots(self, rung: Rung, workers: int, position: int) -> int:
        """Take up to ``workers`` slots of the host budget; 0 skips the rung (recorded).

        A slot is one concurrent task on any rung, reserving the task's memory (and a worker
        process's own on process rungs); the sequential rung always gets its one slot, so
        every instance on the host makes progress.
        """
        assert self.budget is not None
        memory = self.plan.worker_memory(rung) if self.plan is not None else 0
        self._grant = self.budget.acquire(
            workers,
            memory_per_slot=memory,
            label=rung.label(workers),
            wait=self.budget_wait,
            guaranteed=rung.backend == "sequential",
        )
        if self._grant.count:
            return self._grant.count
        self._release_slots()
        status = self.budget.status()
        holders = sorted({s.pid for s in status.held if not s.over_budget and s.pid is not None})
        beyond = sum(1 for s in status.held if s.over_budget)
        reason = (
            f"host budget full: {status.held_in_budget} of {status.size} worker slots held "
            f"by pids {', '.join(map(str, holders[:8]))}"
            + (f" (and {beyond} beyond it, by instances running sequentially)" if beyond else "")
        )
        self.report.rungs.append(
            RungRecord(
                label=rung.label(workers),
                backend=rung.backend,
                workers=0,
                skipped=reason,
                slots=f"asked for {workers}, granted 0",
            )
        )
        log.warning(
            "%s skipped: %s; stepping down to %s",
            rung.label(workers),
            reason,
            self._next_label(position),
        )
        return 0

    def _release_slots(self) -> None:
        if self._grant is not None:
            self._grant.release()
            self._grant = None

    def _next_label(self, position: int) -> str:
        if position + 1 < len(self.rungs):
            nxt = self.rungs[position + 1]
            return nxt.label(nxt.workers)
        return "nothing"

    def _left(self) -> str:
        done = self._delivered
        if self._total is not None:
            return f"{self._total - done} of {self._total} tasks left"
        return f"{done} tasks done so far"

    # ---- one rung --------------------------------------------------------------------

    def _run_on(self, backend: Backend, record: RungRecord, last: bool) -> Stepping:
        limit = 1 if backend.name == "sequential" else 2 * backend.workers
        stall = _Stall()
        while True:
            failure: BaseException | None = None
            current = sum(1 for f in self._flights.values() if f.backend is backend)
            while current < limit:
                batch = self._take(backend.workers, limit)
                if batch is None:
                    break
                try:
                    future = self._submit(backend, batch)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    self._requeue_batch(batch)
                    failure = exc
                    break
                self._flights[future] = _Flight(batch, backend, record)
                future.add_done_callback(self._events.put)
                current += 1
                if backend.broken is not None:
                    failure = backend.broken
                    break
                if future.done():
                    break  # sequential: deliver before taking more
            if failure is None and self._finished():
                return None
            quiet = False
            if failure is None:
                failure, quiet = yield from self._collect(backend, last)
            if failure is None and quiet:
                failure = self._watch(backend, stall)
            if failure is not None:
                return failure

    def _submit(self, backend: Backend, batch: _Batch) -> Future[Any]:
        if backend.in_process:
            return backend.submit(run_batch, self.fn, batch.items)
        return backend.submit(run_batch, self._payload, batch.items, True)

    def _take(self, workers: int, in_flight: int) -> _Batch | None:
        if self._requeue:
            return self._requeue.pop(0)
        if self._exhausted:
            return None
        if self.settings.ordered:
            # One slow early batch must not let finished later results pile up without end
            # while they wait their turn: read ahead only a few batches' worth.
            window = 2 * in_flight * max(self._sizer.last, 1)
            if self._next_index - self._expected >= window:
                return None
        remaining = None if self._total is None else self._total - self._next_index
        size = self._sizer.size(workers, remaining)
        indexes: list[int] = []
        items: list[Any] = []
        if self._inbox is not None:
            items, self._exhausted = self._inbox.take(size, self.accept)
            indexes = list(range(self._next_index, self._next_index + len(items)))
            self._next_index += len(items)
            return _Batch(indexes, items) if items else None
        for item in self._source:
            indexes.append(self._next_index)
            items.append(item)
            self._next_index += 1
            if len(items) >= size:
                break
        else:
            self._exhausted = True
        return _Batch(indexes, items) if items else None

    def _requeue_batch(self, batch: _Batch) -> None:
        self._requeue.append(batch)
        self._requeue.sort()

    def _collect(
        self, backend: Backend, last: bool
    ) -> Generator[Outcome, None, tuple[BaseException | None, bool]]:
        """Wait for finished batches and deliver them; return (failure, quiet) where quiet
        means nothing happened for a poll interval (time for the watchdog to look)."""
        try:
            events = [self._events.get(timeout=_POLL)]
        except queue.Empty:
            return None, True
        with contextlib.suppress(queue.Empty):
            while True:
                events.append(self._events.get_nowait())
        finished = [f for f in events if f is not None and f in self._flights]
        failure: BaseException | None = None
        for future in sorted(finished, key=lambda f: self._flights[f].batch.indexes[0]):
            flight = self._flights[future]
            error = future.exception()
            if error is not None:
                if flight.backend is backend:
                    failure = failure or error  # _step_down moves it on, with its siblings
                else:
                    del self._flights[future]
                    self._requeue_batch(flight.batch)
                continue
            del self._flights[future]
            current = flight.backend is backend
            memory = yield from self._deliver(
                flight.batch, flight.record, future.result(), can_step_down=current and not last
            )
            if memory is not None:
                failure = failure or memory
        return failure, False

    def _deliver(
        self, batch: _Batch, record: RungRecord, result: BatchResult, can_step_down: bool
    ) -> Stepping:
        """Hand a finished batch's outcomes out; return a MemoryError that should step down."""
        self._sizer.observe(len(batch.items), result.elapsed)
        errors = result.errors or {}
        step_down: MemoryError | None = None
        for position, index in enumerate(batch.indexes):
            if position in errors:
                exc = self._task_exception(errors[position])
                if (
                    isinstance(exc, MemoryError)
                    and self.settings.memory_error_steps_down
                    and can_step_down
                ):
                    self._requeue_batch(_Batch([index], [batch.items[position]]))
                    step_down = step_down or exc
                    continue
                yield from self._task_failed(index, exc)
                record.finished += 1
                continue
            record.finished += 1
            self._delivered += 1
            yield index, result.values[position], True
        return step_down

    @staticmethod
    def _task_exception(error: BaseException | TaskException) -> BaseException:
        if isinstance(error, TaskException):
            exc = error.exc
            exc.__cause__ = RemoteTraceback(error.tb)
            return exc
        return error

    def _task_failed(self, index: int, exc: BaseException) -> Iterator[Outcome]:
        self.report.task_errors += 1
        self._delivered += 1
        if self.settings.errors == "raise":
            raise exc
        yield index, exc, False

    def _watch(self, backend: Backend, stall: _Stall) -> BaseException | None:
        """The watchdog: dead machinery with work outstanding for too long is a failure."""
        outstanding = any(f.backend is backend for f in self._flights.values())
        what = backend.health() if outstanding else None
        if what is None:
            stall.since = None
            return None
        now = time.monotonic()
        if stall.since is None or stall.what != what:
            stall.since, stall.what = now, what
            log.debug(
                "%s: %s; waiting up to %.1f s", backend.label, what, self.settings.stall_timeout
            )
            return None
        if now - stall.since >= self.settings.stall_timeout:
            return ResourceFailure(
                Reason.EXECUTOR_STALLED,
                f"{what} for {now - stall.since:.1f} s with tasks outstanding",
            )
        return None

    # ---- stepping down ---------------------------------------------------------------

    def _step_down(
        self, backend: Backend, record: RungRecord, failure: ResourceFailure, then: str
    ) -> None:
        died = failure.reason is Reason.WORKER_DIED
        moved = 0
        for future, flight in list(self._flights.items()):
            if flight.backend is not backend:
                continue
            if future.done() and not future.cancelled() and future.exception() is None:
                continue  # finished: delivered by _drain_orphans or the next rung's waits
            if backend.in_process and not future.cancel() and not future.done():
                continue  # running in a thread of ours: an orphan, its result will be kept
            del self._flights[future]
            batch = flight.batch
            if not backend.in_process:
                # It may have started (at-least-once); if a worker died, it may be the cause.
                batch.suspect = batch.suspect or died
                self.report.rerun += len(batch.items)
            self._requeue_batch(batch)
            moved += len(batch.items)
        backend.abandon()
        record.failure = failure.detail or failure.reason.value
        record.reason = failure.reason.value
        record.requeued = moved
        log.warning(
            "%s failed: %s (%s); %s with %s",
            backend.label,
            failure.reason.value,
            failure.detail,
            then,
            self._left(),
        )

    def _drain_orphans(self) -> Iterator[Outcome]:
        while self._flights:
            done, _ = wait(list(self._flights), return_when=FIRST_COMPLETED)
            for future in done:
                flight = self._flights.pop(future)
                if future.exception() is None:
                    yield from self._deliver(
                        flight.batch, flight.record, future.result(), can_step_down=False
                    )

    def _isolate(self) -> Iterator[Outcome]:
        """Run each suspect batch alone in fresh processes before an in-process rung."""
        from .isolation import Crashed, bisect  # multiprocessing: only when needed

        suspects = [b for b in self._requeue if b.suspect]
        self._requeue = [b for b in self._requeue if not b.suspect]
        if self._payload is None:
            self._payload = dumps_function(self.fn)
        record = RungRecord(label="isolation(1)", backend="isolation", workers=1, started=True)
        self.report.rungs.append(record)
        began = time.perf_counter()
        for batch in suspects:
            self.report.isolated += len(batch.items)
            items = dict(zip(batch.indexes, batch.items, strict=True))
            try:
                pieces = list(bisect(self._payload, batch.indexes, batch.items, self._start_method))
            except OSError as exc:
                log.warning(
                    "cannot start a process to isolate %d suspect task%s (%s); they run on "
                    "the next rung",
                    len(batch.items),
                    "" if len(batch.items) == 1 else "s",
                    exc,
                )
                batch.suspect = False
                self._requeue_batch(batch)
                continue
            for indexes, outcome in pieces:
                if isinstance(outcome, Crashed):
                    index = indexes[0]
                    self.report.crashed.append(index)
                    log.warning(
                        "task %d killed its worker process again; reported as crashed", index
                    )
                    yield from self._task_failed(index, TaskCrashed(index, outcome.exitcode))
                    continue
                piece = _Batch(list(indexes), [items[i] for i in indexes])
                yield from self._deliver(piece, record, outcome, can_step_down=False)
        record.wall = time.perf_counter() - began

    def _abort(self, backend: Backend, rung: Rung) -> None:
        """The run ends early (a task raised, the consumer stopped): free the executor."""
        busy = False
        for future, flight in list(self._flights.items()):
            if flight.backend is backend and not future.cancel() and not future.done():
                busy = True
        if busy:
            backend.abandon()
        else:
            pools.release(backend, rung, self.settings.reuse)

    def _cancel_all(self) -> None:
        for future in list(self._flights):
            future.cancel()
        self._flights.clear()
