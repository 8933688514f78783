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
        │ translate (one boundary); decide: restart or  │                 │
        │ step down; keep finished batches; cancel or   ├─────────────────┘
        │ requeue the rest (process rung: suspects);    │   next rung (or the
        │ abandon the executor; log one WARNING line    │   same, restarted)
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
import queue
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from ..backends.base import Backend
from ..backends.failures import translate
from ..errors import BackendUnavailable, Reason, ResourceFailure
from ..options import Options
from ..planning.rung import Rung
from ..planning.setup import Setup
from . import pools
from .batch import dumps_function, run_batch
from .decide import Step, Watchdog, decide
from .delivery import Delivery, Outcome
from .flights import Batch, Feed, Flight, Inbox, Sizer
from .grants import Slots
from .report import Report, RungRecord, log_plan

__all__ = ["Engine", "Outcome"]

log = logging.getLogger("stepdown")

# A generator of outcomes that finally returns the failure (if any) that ends the rung.
Stepping = Generator[Outcome, None, BaseException | None]

_POLL = 0.2
_TARGET_BATCH_SECONDS = 0.05


class Engine:
    """Runs ``fn`` over ``items`` down the plan's ladder; iterate it for ``(index, value, ok)``.

    ``ok`` is False when ``value`` is the task's exception (only with ``errors="return"``; with
    ``"raise"`` it is raised instead). ``accept`` filters what an :class:`Inbox` hands over.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any] | Inbox,
        setup: Setup,
        options: Options,
        *,
        accept: Callable[[Any], bool] = lambda item: True,
    ) -> None:
        self.fn = fn
        self.options = options
        self.plan = setup.plan
        self.rungs = list(setup.plan.usable_rungs())
        self._sizer = Sizer(options.batch_size, _TARGET_BATCH_SECONDS)
        self._feed = Feed(items, self._sizer, accept)
        self.report = Report.planned(setup.plan, self._feed.total)
        log_plan(setup.plan)
        self._delivery = Delivery(options, self._feed, self._sizer, self.report)
        # Finished futures arrive here from their done-callbacks (and None when the inbox has
        # news): one queue to block on, instead of installing waiters on every flight per step.
        self._events: queue.SimpleQueue[Future[Any] | None] = queue.SimpleQueue()
        if self._feed.inbox is not None:
            self._feed.inbox.listener = self._events.put
        self._flights: dict[Future[Any], Flight] = {}
        self._payload: bytes | None = None
        self._slots = Slots(setup.budget, setup.budget_wait)
        self._start_method: str | None = None
        # The rung running now (for a caller that wants to watch or, in the demo, to kill one
        # of its workers); None before the first rung starts.
        self.backend: Backend | None = None

    # ---- iteration -------------------------------------------------------------------

    def __iter__(self) -> Generator[Outcome, None, None]:
        started = time.perf_counter()
        try:
            if self.options.ordered:
                yield from self._in_order(self._drive())
            else:
                yield from self._drive()
        finally:
            self.report.wall = time.perf_counter() - started
            self.report.tasks = max(self.report.tasks, self._feed.next_index)
            self._cancel_all()

    def _in_order(self, outcomes: Iterator[Outcome]) -> Iterator[Outcome]:
        waiting: dict[int, tuple[Any, bool]] = {}
        for index, value, ok in outcomes:
            waiting[index] = (value, ok)
            while self._feed.expected in waiting:
                value, ok = waiting.pop(self._feed.expected)
                yield self._feed.expected, value, ok
                self._feed.expected += 1

    # ---- the ladder ------------------------------------------------------------------

    def _drive(self) -> Iterator[Outcome]:
        position = 0
        restarts = 0
        while position < len(self.rungs) and not self._finished():
            rung = self.rungs[position]
            last = position == len(self.rungs) - 1
            if rung.in_process and self._feed.has_suspects:
                if self._payload is None:
                    self._payload = dumps_function(self.fn)
                yield from self._delivery.isolate(self._payload, self._start_method)
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
                self._slots.release()
            if error is None:
                pools.release(backend, rung, self.options.reuse)
                yield from self._drain_orphans()
                return
            failure = translate(error, backend.label, backend.dead_worker_exitcode())
            if decide(failure, rung, restarts) is Step.RESTART:
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
        return self._feed.exhausted and not self._feed.requeued and not self._flights

    def _start(self, rung: Rung, position: int) -> Backend | None:
        workers = rung.workers or 1
        granted = self._slots.take(rung, workers, self.plan.worker_memory(rung))
        if isinstance(granted, str):
            self.report.rungs.append(
                RungRecord(
                    label=rung.label(workers),
                    backend=rung.backend,
                    workers=0,
                    skipped=granted,
                    slots=f"asked for {workers}, granted 0",
                )
            )
            log.warning(
                "%s skipped: %s; stepping down to %s",
                rung.label(workers),
                granted,
                self._next_label(position),
            )
            return None
        workers = granted
        label = rung.label(workers)
        record = RungRecord(label=label, backend=rung.backend, workers=workers)
        record.slots = self._slots.granted
        self.report.rungs.append(record)
        began = time.perf_counter()
        try:
            backend, warm = pools.acquire(
                rung, workers, self.options.reuse, self.options.stall_timeout
            )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self._slots.release()
            failure = translate(exc, label)
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
                pools.release(backend, rung, self.options.reuse)
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

    def _next_label(self, position: int) -> str:
        if position + 1 < len(self.rungs):
            nxt = self.rungs[position + 1]
            return nxt.label(nxt.workers)
        return "nothing"

    def _left(self) -> str:
        done = self._delivery.delivered
        if self._feed.total is not None:
            return f"{self._feed.total - done} of {self._feed.total} tasks left"
        return f"{done} tasks done so far"

    # ---- one rung --------------------------------------------------------------------

    def _run_on(self, backend: Backend, record: RungRecord, last: bool) -> Stepping:
        limit = 1 if backend.synchronous else 2 * backend.workers
        watchdog = Watchdog(self.options.stall_timeout)
        while True:
            failure: BaseException | None = None
            current = sum(1 for f in self._flights.values() if f.backend is backend)
            while current < limit:
                batch = self._feed.take(backend.workers, limit, self.options.ordered)
                if batch is None:
                    break
                try:
                    future = self._submit(backend, batch)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    self._feed.requeue(batch)
                    failure = exc
                    break
                self._flights[future] = Flight(batch, backend, record)
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
                outstanding = any(f.backend is backend for f in self._flights.values())
                failure = watchdog.check(backend, outstanding)
            if failure is not None:
                return failure

    def _submit(self, backend: Backend, batch: Batch) -> Future[Any]:
        if backend.in_process:
            return backend.submit(run_batch, self.fn, batch.items)
        return backend.submit(run_batch, self._payload, batch.items, True)

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
                    self._feed.requeue(flight.batch)
                continue
            del self._flights[future]
            current = flight.backend is backend
            memory = yield from self._delivery.deliver(
                flight.batch, flight.record, future.result(), can_step_down=current and not last
            )
            if memory is not None:
                failure = failure or memory
        return failure, False

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
            self._feed.requeue(batch)
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
                    yield from self._delivery.deliver(
                        flight.batch, flight.record, future.result(), can_step_down=False
                    )

    def _abort(self, backend: Backend, rung: Rung) -> None:
        """The run ends early (a task raised, the consumer stopped): free the executor."""
        busy = False
        for future, flight in list(self._flights.items()):
            if flight.backend is backend and not future.cancel() and not future.done():
                busy = True
        if busy:
            backend.abandon()
        else:
            pools.release(backend, rung, self.options.reuse)

    def _cancel_all(self) -> None:
        for future in list(self._flights):
            future.cancel()
        self._flights.clear()
