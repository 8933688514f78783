"""The joblib backend class: joblib's contract (configure, submit, callbacks, abort, nesting)
on top of one :class:`~.calls.Call` per ``Parallel`` call."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import joblib
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from ...errors import UsageError
from ...options import BackendOptions, Options
from ...planning.setup import Setup, prepare
from ...runner.report import Report
from .calls import Call, Config

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["OPTION_KEYS", "StepdownBackend"]

log = logging.getLogger("stepdown")

# What Parallel passes to configure() whatever the backend: the memmapping settings are ours to
# honour; the multiprocessing context and verbosity are not used (a rung names its start method).
_JOBLIB_KEYS = frozenset({"max_nbytes", "mmap_mode", "temp_folder", "verbose", "context"})
# The options a user may give the backend (here, to parallel_config or to Parallel).
OPTION_KEYS = frozenset(BackendOptions.__optional_keys__)
# Auto-batching's first steps: how much a batch may grow, and how long the grown batch may be
# expected to last (stepdown's own batch target), for eightfold growth instead of joblib's two.
_FAST_GROWTH = 8
_FAST_UNTIL = 0.05


class StepdownBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib backend that runs batches on a stepdown ladder (process pool → threads → caller).

    ``ladder`` (e.g. ``["loky:4", "thread:2"]``) replaces the policy's rules; otherwise
    ``profile`` and ``policy`` choose the ladder as everywhere in stepdown. ``n_jobs`` caps every
    rung's workers; ``prefer="threads"`` or ``require="sharedmem"`` climb only the thread rung.
    The other options (``max_workers``, ``task_memory``, ``stall_timeout``, ``memory_error``,
    ``reuse``) are :class:`~stepdown.options.Options`'. Options can be given here, to
    ``parallel_config(backend="stepdown", ...)``, or per call to ``Parallel(...)``.

    ``last_report`` is the :class:`stepdown.Report` of the last call that ended.
    """

    supports_retrieve_callback = True
    supports_sharedmem = True  # require="sharedmem" keeps this backend, on the thread rung
    uses_threads = False
    supports_inner_max_num_threads = False
    default_n_jobs = 1
    # AutoBatchingMixin's state, declared for the type checker (joblib's classes are untyped).
    _effective_batch_size: int
    _smoothed_batch_duration: float

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **options: Unpack[BackendOptions],
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._options = Options(**options)
        self._lock = threading.Lock()
        self._configs: weakref.WeakKeyDictionary[Any, Config] = weakref.WeakKeyDictionary()
        self._runs: weakref.WeakKeyDictionary[Any, Call] = weakref.WeakKeyDictionary()
        self._last_config: Config | None = None
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
        unknown = sorted(set(given) - OPTION_KEYS)
        if unknown:
            raise UsageError(
                f"Parallel(backend='stepdown'): unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(OPTION_KEYS))}"
            )
        options = replace(self._options, **given) if given else self._options
        timeout = getattr(parallel, "timeout", None)
        if timeout is not None and options.task_timeout is None:
            # joblib's timeout bounds each batch's wait; here it bounds each batch's run, and a
            # batch that runs over raises TaskTimeout (a TimeoutError) as joblib's would.
            options = replace(options, task_timeout=timeout)
        # n_jobs caps every rung; prefer="threads" or require="sharedmem" climb only threads.
        cap = min(workers, options.max_workers or workers)
        planned = replace(options, max_workers=cap)
        hint = f"prefer={prefer!r}" if prefer == "threads" else None
        if require == "sharedmem":
            hint = f"require={require!r}"
        if hint is not None:
            planned = replace(planned, ladder=["thread"])
        setup = _said(prepare(planned, getattr(parallel, "n_tasks", None)), n_jobs, workers, hint)
        if all(rung.info.single for rung in setup.plan.usable_rungs()):
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        max_nbytes = kwargs.get("max_nbytes", 1_000_000)
        config = Config(
            setup,
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
        stale: Call | None = None
        with self._lock:
            run = self._runs.get(parallel) if parallel is not None else None
            if run is None or run.call_id != call_id:
                stale = run
                config = self._configs.get(parallel) if parallel is not None else None
                config = config or self._last_config
                if config is None:
                    raise RuntimeError("StepdownBackend.submit() before configure()")
                run = Call(call_id, config)
                if parallel is not None:
                    self._runs[parallel] = run
        if stale is not None:
            self._end(stale)
        return run.submit(func, callback)

    def compute_batch_size(self) -> int:
        """joblib's auto batch size, with a faster start. joblib doubles a batch each time one
        of the current size comes back: tiny tasks then take about ten round trips, each paying
        the whole per-batch cost with workers idle, before a batch hides it. While a batch
        came back so soon that eight times as many tasks still fit in ``_FAST_UNTIL`` (its
        time was mostly the round trip), it grows eightfold; after that joblib's rule goes on.
        """
        duration = self._smoothed_batch_duration
        if not 0 < duration <= _FAST_UNTIL / _FAST_GROWTH:
            size: int = super().compute_batch_size()
            return size
        size = self._effective_batch_size * _FAST_GROWTH
        self._effective_batch_size = size
        # As joblib does on a change: the next duration is measured at the new size.
        self._smoothed_batch_duration = self._DEFAULT_SMOOTHED_BATCH_DURATION
        if self.parallel is not None and self.parallel.verbose >= 10:
            self.parallel._print(
                f"Batch computation too fast ({duration}s.) Setting batch_size={size}."
            )
        return size

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

    def _end(self, run: Call) -> None:
        run.end()
        self.last_report = run.report
        log.info("%s", run.report)


def _said(setup: Setup, n_jobs: int, workers: int, hint: str | None) -> Setup:
    """The setup, its plan saying what joblib asked for: the report then reads ``rules[1],
    joblib n_jobs=4`` or ``joblib prefer='threads', n_jobs=4``, not ``ladder argument``."""
    jobs = f"n_jobs={n_jobs}" if n_jobs == workers else f"n_jobs={n_jobs} ({workers})"
    rule = setup.plan.rule
    if hint is not None:
        rule = replace(rule, given_by=f"joblib {hint}", capped_by=jobs)
    else:
        rule = replace(rule, capped_by=f"joblib {jobs}")
    return replace(setup, plan=replace(setup.plan, rule=rule))
