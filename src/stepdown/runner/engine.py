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
it stays in flight as an orphan and its result is kept when it finishes. A rung is *renewed* (a
fresh executor of the same rung, no step down) when a task ran over ``task_timeout``
(:mod:`.timeouts`: its worker is killed, or in-process the task is abandoned) or its workers
have run ``max_tasks_per_child`` tasks (a worker then declines new batches).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from ..backends.base import Backend
from ..backends.failures import translate
from ..errors import Reason, ResourceFailure, TaskTimeout
from ..options import Options
from ..planning import worktime
from ..planning.rung import Rung
from ..planning.setup import Setup
from . import pools
from .batch import BatchResult
from .decide import Renew, Step, Watchdog, decide, fresh_pool
from .delivery import Delivery, Outcome
from .flights import Events, Feed, Flight, Flights, Inbox, Sizer
from .grants import Slots
from .memory import MemoryCare
from .report import Report, RungRecord, log_plan
from .shipping import Shipping, initializer_failed
from .timeouts import Timeouts

__all__ = ["Engine", "Outcome"]

log = logging.getLogger("stepdown")

# A generator of outcomes that finally returns the failure (if any) that ends the rung.
Stepping = Generator[list[Outcome], None, BaseException | None]

_TARGET_BATCH_SECONDS = 0.05


class Engine:
    """Runs ``fn`` over ``items`` down the plan's ladder; iterate it for ``(index, value, ok)``.

    ``ok`` is False when ``value`` is the task's exception (only with ``errors="return"``; with
    ``"raise"`` it is raised instead). ``accept`` filters what an :class:`Inbox` hands over;
    ``learn`` is the key of ``fn``'s task time, for later plans (:mod:`..planning.worktime`).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any] | Inbox,
        setup: Setup,
        options: Options,
        *,
        accept: Callable[[Any], bool] = lambda item: True,
        learn: str | None = None,
    ) -> None:
        self.fn = fn
        self._learn = learn
        self.options = options
        self.plan = setup.plan
        self.rungs = list(setup.plan.usable_rungs())
        self._sizer = Sizer(options.batch_size, _TARGET_BATCH_SECONDS, options.max_tasks_per_child)
        self._feed = Feed(items, self._sizer, accept)
        self.report = Report.planned(setup.plan, self._feed.total)
        log_plan(setup.plan)
        self._memory = MemoryCare(options.task_bytes, 10 * options.stall_timeout)
        self.delivery = Delivery(options, self._feed, self._sizer, self.report, self._memory)
        # Finished futures arrive here from their done-callbacks (None: the inbox has news; an
        # exception: stop). One queue to block on, not waiters on every flight per step.
        self._events = Events()
        if self._feed.inbox is not None:
            self._feed.inbox.listener = self._events.put
        self._flights = Flights()
        self._slots = Slots(setup.budget, setup.budget_wait)
        self._start_method: str | None = None
        self._timeouts = Timeouts(options.task_timeout)
        self._shipping = Shipping(fn, options, self._timeouts, self._memory)
        self._retiring = False  # a worker declined a batch: renew once the rung is idle
        self._renewed: RungRecord | None = None
        self._shrunk: int | None = None  # workers for the same rung after a memory failure
        self._ended = Reason.EXECUTOR_BROKEN  # why the last rung failed or was skipped
        # In order: results that finished before an earlier one, by index.
        self.waiting: dict[int, tuple[Any, bool]] = {}
        # The rung running now (the demo kills one of its workers); None before the first.
        self.backend: Backend | None = None
        self._started: float | None = None

    def interrupt(self, exc: BaseException) -> None:
        """Stop the run from another thread: ``exc`` is raised where the runner waits."""
        self._events.put(exc)

    def live_report(self) -> Report:
        """The report, its task count and wall time brought up to now."""
        if self._started is not None:
            self.report.wall = time.perf_counter() - self._started
        self.report.tasks = max(self.report.tasks, self._feed.next_index)
        self.report.task_memory = self._memory.task.describe()
        return self.report

    # ---- iteration -------------------------------------------------------------------

    def __iter__(self) -> Generator[Outcome, None, None]:
        self._started = time.perf_counter()
        try:
            # Outcomes travel a batch at a time: per task, only this loop's cost is paid.
            chunks = self._drive()
            if self.options.ordered:
                chunks = self._feed.in_order(chunks, self.waiting)
            for chunk in chunks:
                yield from chunk
        finally:
            self.live_report()
            self._flights.cancel_all()
            self._timeouts.close()
        worktime.record(self._learn, self._sizer.per_task)  # all delivered: for later plans

    # ---- the ladder ------------------------------------------------------------------

    def _drive(self) -> Iterator[list[Outcome]]:
        position = 0
        restarts = 0
        while position < len(self.rungs) and not self._finished():
            rung = self.rungs[position]
            last = position == len(self.rungs) - 1
            if rung.in_process and self._feed.has_suspects:
                yield from self.delivery.isolate(self._shipping.payload, self._start_method)
            backend = self._start(rung, position)
            if backend is None:
                position += 1
                continue
            self.backend = backend
            record = self.report.rungs[-1]
            rung_started = time.perf_counter()
            self._memory.begin(backend, self._timeouts)
            try:
                error = yield from self._run_on(backend, record, last)
            except BaseException:
                self._abort(backend, rung)
                raise
            finally:
                self._memory.end()
                record.wall = time.perf_counter() - rung_started
                self._slots.release()
            if error is None:
                pools.release(backend, rung, self.options.reuse)
                yield from self._drain_orphans()
                return
            if isinstance(error, Renew):
                self._renew(backend, record, error)
                continue
            failure = translate(error, backend.label, backend.dead_worker_exitcode())
            failure, memory = self._memory.judge(failure)
            step = decide(failure, rung, restarts, backend.workers, memory)
            if step is Step.RESTART:
                restarts += 1
                self.rungs[position], fresh = fresh_pool(rung, self.plan.resources, backend.workers)
                self._step_down(backend, record, failure, f"restarting it with {fresh}")
                continue
            if step is Step.SHRINK:
                self._step_down(backend, record, failure, "shrinking it")
                continue
            then = f"stepping down to {self._next_label(position)}"
            if step is Step.WAIT and self._memory.again():
                self._step_down(backend, record, failure, "running it again once a task fits")
                why = self._memory.room_for_one(self._events.pause)
                if why is None:
                    self._shrunk = 1
                    continue
                log.warning("%s: %s; %s with %s", backend.label, why, then, self._left())
            else:
                self._step_down(backend, record, failure, then)
            position += 1
            restarts = 0
        if not self._finished():
            raise ResourceFailure(self._ended, "every rung of the ladder failed")

    def _finished(self) -> bool:
        return self._feed.exhausted and not self._feed.requeued and not self._flights

    def _start(self, rung: Rung, position: int) -> Backend | None:
        renewed, self._renewed = self._renewed, None
        shrunk, self._shrunk = self._shrunk, None
        workers = shrunk or (renewed.workers if renewed is not None else rung.workers) or 1
        why: int | str | None
        if rung.in_process:
            why = self._memory.in_process(workers, self._events.pause)
        else:  # before a pool starts for nothing: only in-process rungs can run such a function
            why = self._shipping.unpicklable()
        if isinstance(why, int):
            workers, why = why, None
        memory = self._memory.charge(self.plan.worker_memory(rung))
        granted = why or self._slots.take(rung, workers, memory)
        if isinstance(granted, str):
            self._ended = Reason.OUT_OF_MEMORY if why and rung.in_process else self._ended
            label = rung.label(workers)
            self.report.skip(label, rung.backend, granted, why, workers, self._next_label(position))
            return None
        label = rung.label(granted)
        record = RungRecord(label=label, backend=rung.backend, workers=granted)
        record.slots = self._slots.granted
        if renewed is not None and renewed.workers == granted:
            record = renewed
        else:
            self.report.rungs.append(record)
        started = pools.start(rung, granted, self.options, record)
        if isinstance(started, ResourceFailure):
            self._slots.release()
            log.warning(
                "%s could not start: %s; stepping down to %s with %s",
                label,
                started.detail or started.reason.value,
                self._next_label(position),
                self._left(),
            )
            return None
        if not started.in_process:
            self._start_method = rung.options.get("start_method")
        return started

    def _next_label(self, position: int) -> str:
        nxt = self.rungs[position + 1] if position + 1 < len(self.rungs) else None
        return "nothing" if nxt is None else nxt.label(nxt.workers)

    def _left(self) -> str:
        done = self.delivery.delivered  # results kept; a task that ran in a lost batch is not
        if self._feed.total is not None:
            return f"{done} of {self._feed.total} results in hand"
        return f"{done} results in hand so far"

    # ---- one rung --------------------------------------------------------------------

    def _run_on(self, backend: Backend, record: RungRecord, last: bool) -> Stepping:
        limit = 1 if backend.synchronous else 2 * backend.workers
        watchdog = Watchdog(self.options.stall_timeout)
        self._retiring = False
        while True:
            failure: BaseException | None = None
            current = len(self._flights.on(backend))
            while current < limit and not self._retiring and self._memory.admits(current):
                batch = self._feed.take(backend.workers, limit, self.options.ordered)
                if batch is None:
                    break
                try:
                    future = self._shipping.submit(backend, batch.items)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    self._feed.requeue(batch)
                    failure = exc
                    break
                self._flights[future] = Flight(batch, backend, record, self._shipping.tag)
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
            if failure is None:
                failure = yield from self._stop_overdue(backend)
            if failure is None and self._retiring and not self._flights.busy(backend):
                failure = Renew(
                    f"its workers ran max_tasks_per_child={self.options.max_tasks_per_child}",
                    graceful=True,
                )
            if failure is None and watchdog.due(quiet, self._timeouts.poll):
                failure = watchdog.check(backend, self._flights.busy(backend), self._timeouts)
            if failure is not None:
                return failure

    def _stop_overdue(self, backend: Backend | None) -> Stepping:
        """Give each task that ran over its ``TaskTimeout`` (those left running in an earlier
        executor of this run too); renew ``backend`` if one of its own did."""
        if not self._timeouts.on:
            return None  # the common case: nothing to look at, each time round the loop
        flights = self._flights.on(None)
        stopped = self._timeouts.stop(flights, self._feed, self.report)
        renew = False
        for future, index in stopped:
            renew = renew or self._flights.pop(future).backend is backend
            yield [self.delivery.failed(index, TaskTimeout(index, self._timeouts.seconds))]
        return Renew("a task ran over task_timeout") if renew else None

    def _collect(
        self, backend: Backend, last: bool
    ) -> Generator[list[Outcome], None, tuple[BaseException | None, bool]]:
        """Wait for finished batches and deliver them; return (failure, quiet) where quiet
        means nothing happened for a poll interval (time for the watchdog to look)."""
        events = self._events.take(self._timeouts.poll)
        if not events:
            return None, True
        finished = [f for f in events if isinstance(f, Future) and f in self._flights]
        failure: BaseException | None = None
        for future in sorted(finished, key=lambda f: self._flights[f].batch.indexes[0]):
            flight = self._flights[future]
            error = future.exception()
            if isinstance(error, KeyboardInterrupt):  # the run stops (docs/semantics.md)
                raise error
            if error is not None:
                if flight.backend is backend:
                    failure = failure or error  # _step_down moves it on, with its siblings
                else:
                    del self._flights[future]
                    self._feed.requeue(flight.batch)
                continue
            del self._flights[future]
            current = flight.backend is backend
            result: BatchResult = future.result()
            if result.init_error is not None:
                raise initializer_failed(result.init_error, flight.backend.label)
            if result.declined:
                self._retiring = self._retiring or current
                self._feed.requeue(flight.batch)
                continue
            memory = yield from self.delivery.deliver(
                flight.batch, flight.record, result, can_step_down=not last
            )
            if memory is not None and current:  # an earlier rung's: its tasks just run again
                failure = failure or memory
        return failure, False

    # ---- stepping down ---------------------------------------------------------------

    def _renew(self, backend: Backend, record: RungRecord, why: Renew) -> None:
        self._flights.evacuate(backend, False, self._feed, self.report)
        if why.graceful and not self._flights.busy(backend):
            backend.shutdown()
        else:
            backend.abandon()
        record.renewed += 1
        self._renewed = record
        log.info("%s: %s; renewing it with %s", backend.label, why, self._left())

    def _step_down(
        self, backend: Backend, record: RungRecord, failure: ResourceFailure, then: str
    ) -> None:
        died = failure.reason is Reason.WORKER_DIED
        moved = self._flights.evacuate(backend, died, self._feed, self.report)
        backend.abandon()
        if then == "shrinking it":  # its workers' memory is free now: size the next pool
            self._shrunk = self._memory.shrunk(backend.workers)
            then = f"shrinking it to {backend.name}({self._shrunk})"
        record.failure = failure.detail or failure.reason.value
        record.reason, self._ended = failure.reason.value, failure.reason
        record.requeued = moved
        why = f"{failure.reason.value} ({failure.detail})"
        log.warning("%s failed: %s; %s with %s", backend.label, why, then, self._left())

    def _drain_orphans(self) -> Iterator[list[Outcome]]:
        while self._flights:
            done, _ = wait(list(self._flights), self._timeouts.poll, FIRST_COMPLETED)
            for future in done:
                flight = self._flights.pop(future)
                if future.exception() is None:
                    yield from self.delivery.deliver(
                        flight.batch, flight.record, future.result(), can_step_down=False
                    )
            yield from self._stop_overdue(None)

    def _abort(self, backend: Backend, rung: Rung) -> None:
        """The run ends early (a task raised, the consumer stopped): free the executor."""
        if self._flights.cancel(backend) or self._timeouts.abandoned:
            backend.abandon()
        else:
            pools.release(backend, rung, self.options.reuse)
