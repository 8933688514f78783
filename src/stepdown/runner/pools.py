"""Starting a rung's executor, and warm executors kept between runs in one process.

For a short job the pool's start-up is the job (loky takes ~110 ms to start, a task may take
10 ms), so an executor that finished a run healthy is kept idle and handed to the next run that
asks for the same rung. A broken executor is never kept. Everything kept is shut down at exit:
the interpreter's, and a worker process's own (a task that ran a nested run in a pool worker:
that worker's exit would otherwise wait for the nested pool's workers forever). A forked child
forgets its parent's.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.util
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from ..backends.base import Backend
from ..backends.failures import classify, translate
from ..backends.registry import load_backend
from ..errors import BackendUnavailable, Reason, ResourceFailure
from ..options import Options
from ..planning import startup
from ..planning.rung import Rung
from .report import RungRecord

__all__ = ["acquire", "release", "shutdown_all", "start"]

log = logging.getLogger("stepdown")

_IDLE_MAX = 2
_idle: OrderedDict[Hashable, Backend] = OrderedDict()
_lock = threading.Lock()


def _key(rung: Rung, workers: int) -> Hashable:
    return (rung.backend, workers, tuple(sorted((k, repr(v)) for k, v in rung.options.items())))


def acquire(
    rung: Rung, workers: int, reuse: bool = True, stall_timeout: float = 3.0
) -> tuple[Backend, bool]:
    """A started backend for ``rung`` with ``workers``, and whether it was warm.

    Raises what starting raised (the caller translates it) or ``BackendUnavailable``.
    """
    key = _key(rung, workers)
    if reuse:
        with _lock:
            backend = _idle.pop(key, None)
        if backend is not None:
            if backend.health() is None and backend.broken is None:
                backend.stall_timeout = stall_timeout
                return backend, True
            backend.abandon()
    try:
        return _started(rung, workers, stall_timeout), False
    except BaseException as exc:
        # A worker that died while its pool started gets the one fresh pool a worker death
        # during the run gets; any other failure to start steps down at once.
        if classify(exc) is not Reason.WORKER_DIED or not int(rung.options.get("restarts", 1)):
            raise
        log.warning("%s: a worker died while the pool started; starting a fresh pool", rung.backend)
    return _started(rung, workers, stall_timeout), False


def _started(rung: Rung, workers: int, stall_timeout: float) -> Backend:
    backend = load_backend(rung.backend)(workers, rung.options)
    backend.stall_timeout = stall_timeout
    began = time.perf_counter()
    try:
        backend.start()
    except BaseException:
        backend.abandon()
        raise
    if backend.in_process:
        return backend
    # What this host's pools cost to start, for the plans to come (stepdown doctor shows it).
    startup.record(
        startup.kind_of(rung.backend, rung.options.get("start_method")), time.perf_counter() - began
    )
    return backend


def release(backend: Backend, rung: Rung, reuse: bool = True) -> None:
    """Keep a healthy, idle ``backend`` warm for the next run, else shut it down."""
    if backend.closed:
        return
    if (
        not reuse
        or rung.options.get("reuse") is False
        or backend.in_process
        or backend.broken is not None
        or backend.health()
    ):
        backend.shutdown()
        return
    key = _key(rung, backend.workers)
    evicted: list[Backend] = []
    _shut_down_at_exit()
    with _lock:
        old = _idle.pop(key, None)
        if old is not None:
            evicted.append(old)
        _idle[key] = backend
        while len(_idle) > _IDLE_MAX:
            evicted.append(_idle.popitem(last=False)[1])
    for stale in evicted:
        stale.shutdown()


def shutdown_all() -> None:
    """Shut down every warm executor (also registered to run at interpreter exit)."""
    _end_all(lambda backend: backend.shutdown())  # each backend's own, not the base's


def _let_go_at_exit() -> None:
    """The interpreter is ending: let every warm executor go without waiting on its idle
    workers' own exit (:meth:`Backend.let_go`)."""
    _end_all(lambda backend: backend.let_go())


def _stop_all() -> None:
    """A process is ending (a worker's exit: what a nested run left warm in it): stop every
    warm executor's idle workers outright. An orderly stop waits for each worker to take its
    stop signal, and in a worker process whose threads forked the pool that wait has been seen
    to last forever; an idle worker has nothing to lose."""
    _end_all(lambda backend: backend.abandon())


def _end_all(end: Callable[[Backend], None]) -> None:
    with _lock:
        kept = list(_idle.values())
        _idle.clear()
    for backend in kept:
        try:
            end(backend)
        except Exception:
            backend.abandon()


def _shut_down_at_exit() -> None:
    global _finalized_in
    if _finalized_in != os.getpid():
        _finalized_in = os.getpid()
        # Runs in a multiprocessing worker's exit (atexit does not), before it joins children.
        multiprocessing.util.Finalize(None, _stop_all, exitpriority=10)
        # Before the pools' own exit hooks wait for their workers (concurrent.futures and loky
        # join them when the interpreter's threads are shut down, before atexit runs).
        register = getattr(threading, "_register_atexit", None)
        if register is not None and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(RuntimeError):  # the interpreter is ending already
                register(_let_go_at_exit)


def _forget_after_fork() -> None:
    global _lock
    _idle.clear()  # copies of the parent's executors: not this process's to use or shut down
    _lock = threading.Lock()


_finalized_in: int | None = None
atexit.register(shutdown_all)
os.register_at_fork(after_in_child=_forget_after_fork)


def start(
    rung: Rung, workers: int, options: Options, record: RungRecord
) -> Backend | ResourceFailure:
    """A started backend for ``rung`` with ``workers`` (warm if one waits and ``options.reuse``),
    its start recorded in ``record``; or the failure to start it, translated and recorded."""
    began = time.perf_counter()
    try:
        backend, warm = acquire(rung, workers, options.reuse, options.stall_timeout)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        failure = translate(exc, record.label)
        record.failure = str(failure)
        record.reason = failure.reason.value
        if isinstance(failure, BackendUnavailable):
            record.skipped = failure.detail
        return failure
    backend.task_timeout = options.task_timeout
    backend.max_tasks_per_child = options.max_tasks_per_child
    if not record.started:  # else renewed: the same rung, its start already reported
        record.started = True
        record.reused = warm
        record.start_seconds = time.perf_counter() - began
        log.debug(
            "%s %s in %.3f s", record.label, "warm" if warm else "started", record.start_seconds
        )
    return backend
