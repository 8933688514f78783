"""The joblib backend ``"stepdown"``: ``Parallel`` on the policy's ladder, stepping down mid-run.

::

    Parallel ──submit(batch, callback)──▶ StepdownBackend ──▶ _Run of that Parallel call
                                                               │ proxy future ◀── callback
                                                               ▼
                              stepdown.Executor ◀── _Job(batch) (one call per joblib batch)
                                  │ engine: rung, step down, rung, ...   (finished batches kept)
                                  ▼
                   executor future done ──_settle──▶ proxy resolved once ──▶ joblib's callback

Each joblib batch (a ``BatchedCalls``) is one call to a :class:`stepdown.Executor`, whose engine
runs it on the first rung that can and moves only unfinished batches on when a rung fails. The
future joblib holds is a proxy of ours: it is resolved exactly once, with the batch's results or
the task's own exception, from the executor's dispatch thread. joblib calls ``submit`` with its
lock held and its callbacks take that lock: we never hold our lock while resolving a proxy.

One backend instance may serve several ``Parallel`` calls (a ``parallel_config`` block): each
call has its own :class:`_Run` and executor, found from the callback joblib hands us.

Import this module to register the backend; importing ``stepdown`` alone never imports joblib.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import shutil
import sys
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle
import joblib
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from ..core.api import LadderSpec
from ..core.errors import Reason, UsageError, classify
from ..core.executor import Executor
from ..core.plan import plan
from ..core.report import Report, RungRecord
from ..core.rung import Rung, parse_ladder

__all__ = ["StepdownBackend", "register_joblib"]

log = logging.getLogger("stepdown")

# What Parallel passes to configure() whatever the backend: the memmapping settings are ours to
# honour; the multiprocessing context and verbosity are not used (a rung names its start method).
_JOBLIB_KEYS = frozenset({"max_nbytes", "mmap_mode", "temp_folder", "verbose", "context"})
_OPTION_KEYS = ("ladder", "profile", "policy", "stall_timeout", "reuse")

# The dispatch thread of a stepdown.Executor marks itself while it resolves proxies: joblib may
# end a call from inside its callback, and an executor must not wait for its own thread.
_in_callback = threading.local()


@dataclass(frozen=True)
class _Options:
    """What the user chose: a ladder, or a profile/policy to plan one; executor settings."""

    ladder: LadderSpec | None = None
    profile: str | None = None
    policy: Any = None
    stall_timeout: float = 3.0
    reuse: bool = True

    def checked(self) -> _Options:
        if self.ladder is not None:
            parse_ladder(list(self.ladder), "joblib backend 'stepdown': ladder")
        timeout = self.stall_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise UsageError(f"stall_timeout must be a positive number of seconds, not {timeout!r}")
        if not isinstance(self.reuse, bool):
            raise UsageError(f"reuse must be True or False, not {self.reuse!r}")
        return self


@dataclass(frozen=True)
class _Config:
    """One configured Parallel: its resolved ladder and how its batches travel."""

    rungs: tuple[Rung, ...]
    options: _Options
    max_nbytes: int | None
    mmap_mode: str
    temp_folder: str | None


def _ladder(workers: int, options: _Options, threads: bool, tasks: int | None) -> list[Rung]:
    """The policy's ladder (or the given one), resolved against this machine, capped at n_jobs."""
    ladder = ["thread"] if threads else options.ladder
    rungs = plan(tasks, options.profile, options.policy, ladder).usable_rungs()
    return [
        rung
        if rung.backend == "sequential"
        else Rung(rung.backend, min(rung.workers or workers, workers), rung.options)
        for rung in rungs
    ]


class StepdownBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib backend that runs batches on a stepdown ladder (process pool → threads → caller).

    ``ladder`` (e.g. ``["loky:4", "thread:2"]``) replaces the policy's rules; otherwise
    ``profile`` and ``policy`` choose the ladder as everywhere in stepdown. ``n_jobs`` caps every
    rung's workers; ``prefer="threads"`` or ``require="sharedmem"`` climb only the thread rung.
    ``stall_timeout`` and ``reuse`` are :class:`stepdown.Executor`'s. Options can be given here,
    to ``parallel_config(backend="stepdown", ...)``, or per call to ``Parallel(...)``.

    ``last_report`` is the :class:`stepdown.Report` of the last call that ended.
    """

    supports_retrieve_callback = True
    supports_sharedmem = True  # require="sharedmem" keeps this backend, on the thread rung
    uses_threads = False
    supports_inner_max_num_threads = False
    default_n_jobs = 1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        ladder: LadderSpec | None = None,
        profile: str | None = None,
        policy: Any = None,
        stall_timeout: float = 3.0,
        reuse: bool = True,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._options = _Options(ladder, profile, policy, stall_timeout, reuse).checked()
        self._lock = threading.Lock()
        self._configs: weakref.WeakKeyDictionary[Any, _Config] = weakref.WeakKeyDictionary()
        self._runs: weakref.WeakKeyDictionary[Any, _Run] = weakref.WeakKeyDictionary()
        self._last_config: _Config | None = None
        self.parallel: Any = None
        self.last_report: Report | None = None

    # ---- joblib's contract ---------------------------------------------------------------

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if not (self.in_main_thread() or self.nesting_level == 0):
            # As joblib's loky backend: no pool below a thread of a nested call.
            return 1
        if n_jobs < 0:
            cpus: int = joblib.cpu_count()
            return max(cpus + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **kwargs: Any,
    ) -> int:
        workers = self.effective_n_jobs(n_jobs)
        if workers == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        given = {k: v for k, v in kwargs.items() if k not in _JOBLIB_KEYS}
        unknown = sorted(set(given) - set(_OPTION_KEYS))
        if unknown:
            raise UsageError(
                f"Parallel(backend='stepdown'): unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(_OPTION_KEYS)}"
            )
        options = replace(self._options, **given).checked() if given else self._options
        threads = prefer == "threads" or require == "sharedmem"
        rungs = _ladder(workers, options, threads, getattr(parallel, "n_tasks", None))
        if all(rung.backend == "sequential" for rung in rungs):
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        max_nbytes = kwargs.get("max_nbytes", 1_000_000)
        config = _Config(
            tuple(rungs),
            options,
            None if max_nbytes is None else int(max_nbytes),
            kwargs.get("mmap_mode") or "r",
            kwargs.get("temp_folder"),
        )
        with self._lock:
            self.parallel = parallel
            if parallel is not None:
                self._configs[parallel] = config
            self._last_config = config
        return workers

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], Any] | None = None) -> Any:
        parallel = getattr(callback, "parallel", None) or self.parallel
        call_id = getattr(callback, "parallel_call_id", None)
        stale: _Run | None = None
        with self._lock:
            run = self._runs.get(parallel) if parallel is not None else None
            if run is None or run.call_id != call_id:
                stale = run
                config = self._configs.get(parallel) if parallel is not None else None
                config = config or self._last_config
                if config is None:
                    raise RuntimeError("StepdownBackend.submit() before configure()")
                run = _Run(call_id, config)
                if parallel is not None:
                    self._runs[parallel] = run
        if stale is not None:
            self._end(stale)
        return run.submit(func, callback)

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        # Parallel._abort sets _aborting before it calls us: that tells which call is ending.
        with self._lock:
            runs = list(self._runs.items())
        aborting = [run for parallel, run in runs if getattr(parallel, "_aborting", False)]
        if not aborting:
            aborting = [run for parallel, run in runs if parallel is self.parallel]
        for run in aborting:
            run.abort()

    def stop_call(self) -> None:
        self._end_finished()

    def terminate(self) -> None:
        self._end_finished()
        self.reset_batch_stats()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        # A task's own Parallel runs in its worker, one batch after another, unless the task
        # opens its own parallel_config: every rung's workers are already busy.
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    # ---- calls ending --------------------------------------------------------------------

    def _end_finished(self) -> None:
        """End the runs whose Parallel call is over (stop_call/terminate name no call)."""
        with self._lock:
            ended = [
                (parallel, run)
                for parallel, run in list(self._runs.items())
                if not getattr(parallel, "_running", False)
                or getattr(parallel, "_call_id", None) != run.call_id
            ]
            for parallel, _ in ended:
                del self._runs[parallel]
        for _, run in ended:
            self._end(run)

    def _end(self, run: _Run) -> None:
        run.end()
        self.last_report = run.report
        log.info("%s", run.report)


class _Job:
    """One joblib batch as the executor calls it: skipped once its Parallel call aborted."""

    __slots__ = ("batch", "run")

    def __init__(self, batch: Callable[[], Any], run: _Run) -> None:
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
        return self.run.reduce(self.batch)


def _nothing() -> None:
    return None


def _same(batch: Any) -> Any:
    return batch


def _dropped() -> Callable[[], None]:
    """What an aborted batch unpickles to in a worker: a call that does nothing."""
    return _nothing


class _Run:
    """One Parallel call: its executor, the batches in flight, their proxy futures."""

    def __init__(self, call_id: Any, config: _Config) -> None:
        self.call_id = call_id
        self.config = config
        self.aborted = False
        self._ended = False
        self._lock = threading.Lock()
        self._pending: dict[Future[Any], tuple[_Job, Future[Any]]] = {}  # by executor future
        options = config.options
        self._executor = Executor(
            list(config.rungs),
            profile=options.profile,
            policy=options.policy,
            stall_timeout=options.stall_timeout,
            reuse=options.reuse,
        )
        self._memmapper = _Memmapper.create(config)
        # Set when not even the executor's dispatch thread could start: the caller runs batches.
        self._inline: deque[tuple[_Job, Future[Any]]] | None = None
        self._inline_report: Report | None = None
        self._draining = False

    @property
    def report(self) -> Report:
        return self._inline_report or self._executor.report

    def submit(self, batch: Callable[[], Any], callback: Callable[[Any], Any] | None) -> Any:
        proxy: Future[Any] = Future()
        if callback is not None:
            proxy.add_done_callback(callback)
        job = _Job(batch, self)
        if self._inline is None and not self.aborted:
            try:
                source = self._executor.submit(job)
            except RuntimeError as exc:
                if self.aborted:
                    pass  # abort() shut the executor down meanwhile
                elif classify(exc) is Reason.CANNOT_START_THREAD:
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
                        proxy.set_exception(error)
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
        self._executor.shutdown(wait=False, cancel_futures=True)

    def end(self) -> None:
        """The Parallel call is over: close the executor (its warm pool goes back to stepdown)."""
        with self._lock:
            self._ended = True
            last = not self._pending
        if self._inline is None:
            wait = not self.aborted and not getattr(_in_callback, "active", False)
            self._executor.shutdown(wait=wait, cancel_futures=self.aborted)
        if last:
            self._release()

    def _release(self) -> None:
        if self._memmapper is not None:
            self._memmapper.close()

    def reduce(self, batch: Any) -> tuple[Any, ...]:
        if self._memmapper is None or "numpy" not in sys.modules:
            return (_same, (batch,))
        return (pickle.loads, (self._memmapper.dumps(batch),))

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


# ---- memmapping large numpy arrays, as joblib's loky backend does ----------------------------

try:
    from joblib._memmapping_reducer import (
        _get_backing_memmap,
        _get_temp_dir,
        _reduce_memmap_backed,
    )
    from joblib.numpy_pickle import dump as _dump_array
    from joblib.numpy_pickle import load_temporary_memmap
except ImportError:  # a joblib without these helpers: arrays are pickled, as for any object
    _MEMMAP_HELPERS = False
else:
    _MEMMAP_HELPERS = True


class _Memmapper:
    """Sends numpy arrays larger than ``max_nbytes`` to worker processes as memory maps.

    Each array is dumped once per Parallel call into a private folder (``temp_folder``,
    ``JOBLIB_TEMP_FOLDER``, ``/dev/shm`` or the temp dir, as joblib chooses) and opened in the
    workers with ``mmap_mode``; an array already backed by a memory map is reopened from its
    file. The folder is removed when the call has ended and nothing of it is in flight.
    Thread and sequential rungs never pickle: they see the caller's arrays themselves.
    """

    def __init__(self, max_nbytes: int, mmap_mode: str, temp_folder: str | None) -> None:
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self.temp_folder = temp_folder
        self.folder: str | None = None
        self._files: dict[int, tuple[weakref.ref[Any], str]] = {}
        self._lock = threading.Lock()
        self._cleanup: weakref.finalize[Any, Any] | None = None

    @classmethod
    def create(cls, config: _Config) -> _Memmapper | None:
        if config.max_nbytes is None or not _MEMMAP_HELPERS:
            return None
        if all(rung.in_process for rung in config.rungs):
            return None
        return cls(config.max_nbytes, config.mmap_mode, config.temp_folder)

    def dumps(self, obj: Any) -> bytes:
        buffer = io.BytesIO()
        _Pickler(buffer, self).dump(obj)
        return buffer.getvalue()

    def reduce(self, array: Any) -> tuple[Any, ...] | None:
        """How to send ``array``, or None to pickle it by value."""
        numpy = sys.modules["numpy"]
        backing = _get_backing_memmap(array)
        if isinstance(backing, numpy.memmap) and backing.filename:
            reduced: tuple[Any, ...] = _reduce_memmap_backed(array, backing)
            return reduced
        if array.dtype.hasobject or array.nbytes <= self.max_nbytes:
            return None
        return (load_temporary_memmap, (self._dump(array), self.mmap_mode, False))

    def _dump(self, array: Any) -> str:
        with self._lock:
            known = self._files.get(id(array))
            if known is not None and known[0]() is array:
                return known[1]
            if self.folder is None:
                name = f"stepdown_joblib_{os.getpid()}_{uuid.uuid4().hex}"
                self.folder = _get_temp_dir(name, self.temp_folder)[0]
                os.makedirs(self.folder, mode=0o700, exist_ok=True)
                # Removed at exit even if the call never ends (an abandoned generator).
                self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
            filename = os.path.join(self.folder, f"{uuid.uuid4().hex}.pkl")
            _dump_array(array, filename)
            self._files[id(array)] = (weakref.ref(array), filename)
            return filename

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with numpy arrays sent as memory maps by a :class:`_Memmapper`."""

    def __init__(self, file: io.BytesIO, memmapper: _Memmapper) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._memmapper = memmapper
        self._numpy = sys.modules["numpy"]

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is self._numpy.ndarray or kind is self._numpy.memmap:
            reduced = self._memmapper.reduce(obj)
            if reduced is not None:
                return reduced
        return super().reducer_override(obj)


# ---- registration ------------------------------------------------------------------------------


def register_joblib(name: str = "stepdown", **defaults: Any) -> None:
    """Register :class:`StepdownBackend` with joblib as ``name`` (done on import as "stepdown").

    ``defaults`` are backend options (``ladder``, ``profile``, ...) for every use of that name,
    e.g. ``register_joblib("kaggle", profile="kaggle")``.
    """
    unknown = sorted(set(defaults) - set(_OPTION_KEYS))
    if unknown:
        raise UsageError(
            f"register_joblib: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(_OPTION_KEYS)}"
        )
    _Options(**defaults).checked()

    def factory(**kwargs: Any) -> StepdownBackend:
        return StepdownBackend(**{**defaults, **kwargs})

    joblib.register_parallel_backend(name, factory if defaults else StepdownBackend)


register_joblib()
