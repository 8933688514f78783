"""One ``Parallel`` call on the backend: its executor, the batches in flight, their proxies.

Each joblib batch (a ``BatchedCalls``) is one call to a :class:`stepdown.Executor`, whose engine
runs it on the first rung that can and moves only unfinished batches on when a rung fails. The
future joblib holds is a proxy of ours: it is resolved exactly once, with the batch's results or
the task's own exception, from the executor's dispatch thread. joblib calls ``submit`` with its
lock held and its callbacks take that lock: we never hold our lock while resolving a proxy.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from ...errors import Reason, ResourceFailure, TaskTimeout
from ...executor import Executor
from ...options import Options
from ...planning.setup import Setup
from ...runner.batch import dumps
from ...runner.report import Report, RungRecord
from .memmap import Memmapper

__all__ = ["Call", "Config"]

log = logging.getLogger("stepdown")

# The dispatch thread of a stepdown.Executor marks itself while it resolves proxies: joblib may
# end a call from inside its callback, and an executor must not wait for its own thread.
_in_callback = threading.local()


@dataclass(frozen=True)
class Config:
    """One configured Parallel: its setup (plan and budget), options, how batches travel."""

    setup: Setup
    options: Options
    max_nbytes: int | None
    mmap_mode: str
    temp_folder: str | None


class _Job:
    """One joblib batch as the executor calls it: skipped once its Parallel call aborted."""

    __slots__ = ("batch", "run")

    def __init__(self, batch: Callable[[], Any], run: Call) -> None:
        self.batch = batch
        self.run = run

    def __call__(self) -> Any:
        if self.run.aborted:
            return None
        return self.batch()

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (by a pool's feeder thread) only when a process rung is about to run it.
        if self.run.aborted:
            return (_dropped, ())
        return (pickle.loads, (self.run.dumps(self.batch),))


def _run(job: Callable[[], Any]) -> Any:
    """What the executor calls, the batch its argument. A worker keeps the functions it
    unpickled, by their bytes: a batch shipped as the function was kept too (its inputs, up to
    eight batches a worker), and equal batches shared one copy that a task could change."""
    return job()


def _nothing() -> None:
    return None


def _dropped() -> Callable[[], None]:
    """What an aborted batch unpickles to in a worker: a call that does nothing."""
    return _nothing


class Call:
    """One Parallel call: its executor, the batches in flight, their proxy futures."""

    def __init__(self, call_id: Any, config: Config) -> None:
        self.call_id = call_id
        self.config = config
        self.aborted = False
        self._ended = False
        self._lock = threading.Lock()
        self._pending: dict[Future[Any], tuple[_Job, Future[Any]]] = {}  # by executor future
        options = config.options
        self._executor = Executor(
            initializer=options.initializer,
            initargs=tuple(options.initargs),
            setup=config.setup,
            task_timeout=options.task_timeout,
            max_tasks_per_child=options.max_tasks_per_child,
            stall_timeout=options.stall_timeout,
            memory_error=options.memory_error,
            reuse=options.reuse,
            progress=False,  # joblib has its own (verbose=); a bar of batches would mislead
        )
        self._memmapper = Memmapper.create(
            config.max_nbytes,
            config.mmap_mode,
            config.temp_folder,
            config.setup.plan.usable_rungs(),
        )
        # Set when not even the executor's dispatch thread could start: the caller runs batches.
        self._inline: deque[tuple[_Job, Future[Any]]] | None = None
        self._inline_report: Report | None = None
        self._draining = False
        self._calls = 0

    @property
    def report(self) -> Report:
        """The executor's report, in joblib's words: each of its tasks is a joblib batch."""
        report = self._inline_report or self._executor.report
        report.units = "joblib batches"
        report.calls = self._calls
        return report

    def submit(self, batch: Callable[[], Any], callback: Callable[[Any], Any] | None) -> Any:
        # A BatchedCalls has a length; any other callable joblib may submit is one call.
        self._calls += len(batch) if hasattr(batch, "__len__") else 1
        proxy: Future[Any] = Future()
        if callback is not None:
            proxy.add_done_callback(callback)
        job = _Job(batch, self)
        if self._inline is None and not self.aborted:
            try:
                source = self._executor.submit(_run, job)
            except RuntimeError as exc:
                if self.aborted:
                    pass  # abort() shut the executor down meanwhile
                elif isinstance(exc, ResourceFailure) and exc.reason is Reason.CANNOT_START_THREAD:
                    self._go_inline(exc)
                else:
                    raise
            else:
                with self._lock:
                    self._pending[source] = (job, proxy)
                source.add_done_callback(self._settle)
                return proxy
        if self.aborted:
            proxy.cancel()
        else:
            self._run_inline(job, proxy)
        return proxy

    def _settle(self, source: Future[Any]) -> None:
        """The executor's future is done: resolve the proxy (joblib's callback runs now)."""
        with self._lock:
            job, proxy = self._pending.pop(source)
            last = self._ended and not self._pending
        # Delivered for good: the executor keeps its calls until it closes, the inputs need not.
        job.batch = _nothing
        outer = getattr(_in_callback, "active", False)  # joblib's callback may submit: nesting
        _in_callback.active = True
        try:
            if self.aborted or source.cancelled():
                proxy.cancel()
            else:
                error = source.exception()
                with contextlib.suppress(InvalidStateError):
                    if error is not None:
                        proxy.set_exception(_as_joblib(error))
                    else:
                        proxy.set_result(source.result())
        finally:
            _in_callback.active = outer
            if last:
                self._release()

    def abort(self) -> None:
        """Drop everything not yet started: queued calls, and requeued ones after a failure."""
        with self._lock:
            self.aborted = True
            sources = list(self._pending)
        for source in sources:
            source.cancel()  # only those still queued; running ones see `aborted` and skip
        # As joblib's own loky backend does: what runs in worker processes is killed, not left
        # to finish (it would hold the pool, its budget slots and the interpreter's exit).
        self._executor.shutdown(wait=False, cancel_futures=True, kill_workers=True)

    def end(self) -> None:
        """The Parallel call is over: close the executor (its warm pool goes back to stepdown)."""
        with self._lock:
            self._ended = True
            last = not self._pending
        if self._inline is None:
            # An aborted call's executor was told to kill its workers: it ends at once, and
            # waiting for it frees its budget slots before the next Parallel call asks.
            wait = not getattr(_in_callback, "active", False)
            self._executor.shutdown(wait=wait, cancel_futures=self.aborted)
        if last:
            self._release()

    def _release(self) -> None:
        if self._memmapper is not None:
            self._memmapper.close()

    def dumps(self, batch: Any) -> bytes:
        """``batch`` pickled for a worker process: cloudpickle (a joblib batch may hold
        lambdas and functions of ``__main__``), large numpy arrays as memory maps."""
        if self._memmapper is None or "numpy" not in sys.modules:
            return dumps(batch)
        return self._memmapper.dumps(batch)

    # ---- when no thread can start ----------------------------------------------------------

    def _go_inline(self, exc: BaseException) -> None:
        log.warning(
            "stepdown cannot start its dispatch thread (%s); this Parallel call runs its "
            "batches one after another in the caller",
            exc,
        )
        self._executor.shutdown(wait=False, cancel_futures=True)
        record = RungRecord(label="sequential", backend="sequential", workers=1, started=True)
        self._inline_report = Report(rungs=[record])
        self._inline = deque()

    def _run_inline(self, job: _Job, proxy: Future[Any]) -> None:
        """Run batches in the caller, one at a time: joblib's callback dispatches the next one
        from inside this loop, so the queue is drained here instead of recursing."""
        assert self._inline is not None and self._inline_report is not None
        with self._lock:
            self._inline.append((job, proxy))
            if self._draining:
                return
            self._draining = True
        record = self._inline_report.rungs[0]
        while True:
            with self._lock:
                if not self._inline:
                    self._draining = False
                    return
                job, proxy = self._inline.popleft()
            try:
                value = job()
            except Exception as exc:
                self._inline_report.task_errors += 1
                proxy.set_exception(exc)
                continue
            if self.aborted:
                proxy.cancel()
                continue
            record.finished += 1
            self._inline_report.tasks += 1
            proxy.set_result(value)


def _as_joblib(error: BaseException) -> BaseException:
    """A batch stopped by ``task_timeout`` (joblib's ``timeout``) raises what joblib's own
    timeout raises, ``multiprocessing.TimeoutError``, whichever of the two saw it first."""
    if not isinstance(error, TaskTimeout):
        return error
    from multiprocessing import TimeoutError

    converted = TimeoutError(str(error))
    converted.__cause__ = error
    return converted
