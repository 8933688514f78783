"""What the two process-pool backends (stdlib ``process`` and ``loky``) share."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from ..errors import Reason, ResourceFailure
from .base import Backend
from .forking import imports_settled

__all__ = ["PoolBackend"]

# A pool whose machinery is dead while starting (a manager thread that could not start its
# queue thread) fails after the stall timeout; one that is merely slow gets this long.
_START_TIMEOUT = 60.0
# How long letting a pool go waits for each of its threads, manager and queue feeder (workers
# that take their stop signal end within milliseconds; killed ones at once).
_SHUTDOWN_TIMEOUT = 5.0


class PoolBackend(Backend):
    """A process pool: start all workers now, watch its manager thread, kill on abandon."""

    def __init__(self, workers: int, options: Any = None) -> None:
        super().__init__(workers, options)
        self._pool: Any = None
        self._children: list[Any] = []

    def _create(self) -> Executor:
        raise NotImplementedError

    def _forks(self) -> bool:
        """Whether workers start as plain forks of the caller (see :mod:`.forking`)."""
        return False

    def start(self) -> None:
        # Children this start creates, to kill on abandon even if the pool never recorded them:
        # a worker forked just before a thread of the pool failed to start would otherwise
        # wait for its start-up data forever, and the interpreter's exit would wait for it.
        before = set(multiprocessing.active_children())
        try:
            with _sigint_blocked():
                self._start()
        finally:
            self._children = [p for p in multiprocessing.active_children() if p not in before]

    def _start(self) -> None:
        if self._forks():
            imports_settled()
        # The first submit launches the workers (all of them with fork, loky): a pool that
        # cannot fork fails here, before a task is handed to it. Waiting for its answer makes
        # the start-up time in the report the real one (loky: ~100 ms, not the 5 ms of submit).
        with _sigint_ignored_by_children():
            self._pool = self._create()
            warmup = self._pool.submit(os.getpid)
        began = time.monotonic()
        dead_since: float | None = None
        while True:
            try:
                warmup.result(timeout=0.05)
                return
            except concurrent.futures.TimeoutError:
                pass
            now = time.monotonic()
            what = self.health()
            dead_since = None if what is None else (dead_since or now)
            if dead_since is not None and now - dead_since > self.stall_timeout:
                raise ResourceFailure(Reason.EXECUTOR_STALLED, f"{what} while starting")
            if now - began > _START_TIMEOUT:
                raise ResourceFailure(
                    Reason.EXECUTOR_STALLED,
                    f"no worker answered within {_START_TIMEOUT:.0f} s of starting the pool",
                )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = self._pool.submit(fn, *args)
        return future

    def _manager_alive(self) -> bool | None:
        thread = getattr(self._pool, "_executor_manager_thread", None)
        return None if thread is None else thread.is_alive()

    def health(self) -> str | None:
        if self._pool is None or self.closed:
            return None
        if self._manager_alive() is False:
            return "the executor's manager thread is dead"
        processes = getattr(self._pool, "_processes", None) or {}
        if processes and not any(p.is_alive() for p in list(processes.values())):
            return "every worker process is dead"
        return None

    def worker_pids(self) -> list[int]:
        processes = getattr(self._pool, "_processes", None) or {}
        return list(processes)

    def dead_worker_exitcode(self) -> int | None:
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        # The pool notices a death through the worker's sentinel, which may be a moment before
        # the exit status can be read: look again briefly.
        dead: list[int] = []
        for _ in range(20):
            codes: list[int | None] = [getattr(p, "exitcode", None) for p in processes]
            # A broken stdlib pool SIGTERMs the survivors itself: the cause is the other code
            # (0 included: a task that called os._exit(0) ends its worker as surely).
            dead = [c for c in codes if c is not None]
            own = [c for c in dead if c != -signal.SIGTERM]
            if own:
                return own[0]
            time.sleep(0.01)
        return dead[0] if dead else None

    def _kill_workers(self) -> None:
        processes = getattr(self._pool, "_processes", None) or {}
        for process in [*processes.values(), *self._children]:
            # By pid: loky's processes have no kill(), and the error would pass unseen.
            pid = getattr(process, "pid", None)
            if pid is not None and _alive(process):
                with contextlib.suppress(OSError):  # already gone
                    os.kill(pid, signal.SIGKILL)

    def abandon(self) -> None:
        if self._pool is None or self.closed:
            self.closed = True
            return
        self.closed = True
        # Kill first: a broken pool's manager thread may be dead, and nobody else would.
        self._kill_workers()
        self._unblock_results()
        # A broken executor may fail to shut down; its workers are dead already.
        with contextlib.suppress(Exception):
            self._shutdown_now()

    def _unblock_results(self) -> None:
        """Let the manager thread leave even if a worker died halfway through a result.

        The manager reads results from a pipe whose write ends are the workers' and this
        process's own. A worker killed mid-write leaves half a message, and the manager would
        wait for the rest forever (and the interpreter's exit with it, which joins that
        thread). Once the workers are gone, closing our write end turns that wait into
        end-of-file, which the manager takes as a broken pool, and it leaves.
        """
        processes = [*(getattr(self._pool, "_processes", None) or {}).values(), *self._children]
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(timeout=1.0)
        results = getattr(self._pool, "_result_queue", None)
        writer = getattr(results, "_writer", None)
        if writer is not None and not any(_alive(p) for p in processes):
            with contextlib.suppress(OSError):
                writer.close()

    def _shutdown_now(self) -> None:
        # Then wait for its manager thread (shutdown forgets it), which ends once the workers
        # have taken their stop signal (or are dead): the interpreter's exit joins it anyway.
        # Python 3.11's exit hook wakes that thread without its lock, and while the thread was
        # closing its wakeup pipe the write failed and printed "Exception ignored ... Bad file
        # descriptor" at the caller's exit (tests/test_exit.py). Once the thread is done the
        # wakeup does nothing.
        manager = getattr(self._pool, "_executor_manager_thread", None)
        self._pool.shutdown(wait=False, cancel_futures=True)
        _join(manager)

    def shutdown(self) -> None:
        if self._pool is not None and not self.closed:
            self._pool.shutdown(wait=True)
        self.closed = True

    def let_go(self) -> None:
        # The pool's own exit hook still joins its manager thread; this only spares it the
        # wait for workers that would each finalize an interpreter (loky's: 50-150 ms).
        if self._pool is not None and not self.closed:
            # Nothing joins the call queue's feeder thread (a daemon: multiprocessing joins it
            # only in a process that did not make the queue), and loky's was seen cut off by
            # the interpreter's end between unlinking a semaphore and telling loky's resource
            # tracker, which then warned of a "leaked semlock" (7 in 100 exits under load).
            # An idle pool's feeder has only the queue's close left to take: it ends at once.
            feeder = getattr(getattr(self._pool, "_call_queue", None), "_thread", None)
            self._shutdown_now()
            _join(feeder)
        self.closed = True


def _join(thread: threading.Thread | None) -> None:
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=_SHUTDOWN_TIMEOUT)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back in this thread while workers start: a worker forked from it inherits
    the mask and ignores the signal before it unblocks it (:mod:`.worker`), so a Ctrl-C that
    lands while it starts is the caller's alone, delivered to it once the pool is up. (loky
    spawns its workers from threads of its own, which this does not reach.)"""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """SIGINT ignored, not only blocked, while workers are launched, so that a worker started
    by fork+exec (loky), whose signal mask the exec resets, starts with it ignored: the
    interpreter then installs no KeyboardInterrupt handler, and a Ctrl-C during its start-up
    cannot print a traceback from it. The caller loses nothing: SIGINT is blocked in this
    thread (:func:`_sigint_blocked`), so one that arrives now stays pending until the handler
    is back — unless another thread that does not block it takes it, and then this does
    nothing. Only the main thread may change a handler; elsewhere this does nothing."""
    handler = signal.getsignal(signal.SIGINT)
    if (
        threading.current_thread() is not threading.main_thread()
        or handler is None  # set outside Python: it could not be put back
        or not hasattr(signal, "sigpending")
        or not _other_threads_block_sigint()
        or signal.SIGINT in signal.sigpending()  # ignoring it now would discard it
    ):
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _other_threads_block_sigint() -> bool:
    """Whether every other thread of this process has SIGINT blocked (Linux: read from
    ``/proc``; elsewhere only when there is no other thread)."""
    me = threading.get_native_id()
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return threading.active_count() == 1
    bit = 1 << (signal.SIGINT - 1)
    for tid in threads:
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/status") as status:
                blocked = next(line for line in status if line.startswith("SigBlk:"))
        except (OSError, StopIteration):  # ended meanwhile
            continue
        if not int(blocked.split()[1], 16) & bit:
            return False
    return True


def _alive(process: Any) -> bool:
    try:
        return bool(process.is_alive())
    except Exception:  # a process object from another parent, or already closed
        return False
