"""What a task costs in memory, learned as the run goes, and the watch that keeps tasks under
the limit so that the kernel's OOM killer never has to choose.

- **Learned task memory.** Each batch on a process rung reports the most it held over what its
  worker held before (:mod:`.peak`); the largest so far is the run's estimate, used where the
  user declared nothing (``task_memory=`` still wins).
- **The limit.** The tightest memory cgroup of the caller (v2 ``memory.max``, v1 limits; usage
  without the file cache the kernel reclaims first) or, without one, the host's available
  memory. Workers of a process rung share it with the caller.
- **The guard.** While a process rung runs, a thread reads what is left (every ``INTERVAL``
  once less than four margins are left, else every ``RELAXED``):
  below ``margin`` it stops the worker running the youngest task (SIGKILL: the pool breaks,
  nothing finished is lost, what was in flight runs again) so that the rung can shrink; and no
  new batch is admitted while one more task would not fit. Workers also volunteer as the OOM
  killer's first choice (:mod:`..backends.worker`): the caller is never it while a worker lives.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable

from ..backends.base import Backend
from ..backends.failures import RECEIVING
from ..errors import Reason, ResourceFailure
from ..planning import footprint
from ..planning.cgroup import (
    Cgroup,
    cgroup_memory,
    find_cgroups,
    parse_mountinfo,
    parse_proc_cgroup,
)
from ..planning.reading import read_text
from ..planning.resources import host_memory
from ..records import record
from ..units import format_size
from .batch import BatchResult
from .timeouts import Timeouts

__all__ = ["Guard", "Left", "MemoryCare", "TaskMemory", "YoungestTask", "memory_left"]

log = logging.getLogger("stepdown")

# Given worker pids, the one running the task that started last (None: none is in a task).
YoungestTask = Callable[[list[int]], "int | None"]


class TaskMemory:
    """The memory one task holds: declared, or the largest peak measured so far."""

    def __init__(self, declared: int | None) -> None:
        self.declared = declared
        self.learned: int | None = None
        self.batches = 0
        self.beyond: int | None = None  # a task needed more than this (it ran out of it)

    def observe(self, peak: int | None, overran: int | None = None) -> None:
        """A batch held at most ``peak`` bytes over its worker's own (``None``: unmeasured);
        a task of it ran out of a share of ``overran`` bytes."""
        if overran is not None:
            self.beyond = max(self.beyond or 0, overran)
        if peak is None:
            return
        self.batches += 1
        if self.learned is None or peak > self.learned:
            self.learned = peak

    @property
    def estimate(self) -> int | None:
        """What one task is taken to hold: declared, else learned (more than any share a task
        ran out of), else unknown."""
        if self.declared is not None:
            return self.declared
        if self.beyond is not None:
            return max(self.learned or 0, self.beyond + 1)
        return self.learned

    def describe(self) -> str | None:
        """``"learned 1.0GiB (largest of 12 batches)"``, for the report; None: nothing known."""
        if self.declared is not None:
            return f"declared {format_size(self.declared)}"
        if self.learned is None:
            return None
        return f"learned {format_size(self.learned)} (largest of {self.batches} batches)"


@record(frozen=True)
class Left:
    """Memory the caller's group may still use: ``free`` of ``limit`` bytes, read at ``where``."""

    free: int
    limit: int
    where: str

    @property
    def margin(self) -> int:
        """Below this much free memory the guard acts: 4% of the limit, at least 48 MiB."""
        return max(self.limit // 25, 48 << 20)


_group: tuple[int, Cgroup | None] | None = None


def _memory_group() -> Cgroup | None:
    global _group
    if _group is None or _group[0] != os.getpid():
        entries = parse_proc_cgroup(read_text("/proc/self/cgroup"))
        mounts = parse_mountinfo(read_text("/proc/self/mountinfo"))
        _group = (os.getpid(), find_cgroups(entries, mounts).get("memory"))
    return _group[1]


def memory_left() -> Left | None:
    """What the tightest memory limit over the caller still allows (``None``: cannot tell).

    All file cache counts as free: the kernel takes it back before it kills anyone, and a
    share or a stop that counted it would fail tasks that fit (a notebook that read big files).
    """
    group = _memory_group()
    if group is not None:
        limit, available = cgroup_memory(group, all_cache=True)
        if limit is not None and limit.value and available is not None and available.value:
            return Left(available.value, limit.value, available.source)
    available, total = host_memory()
    if available is None or total is None or available.value is None or not total.value:
        return None  # no figure, no guard
    return Left(available.value, total.value, "the host's available memory")


class Guard:
    """Watches what is left while one rung runs; see the module's docstring."""

    INTERVAL = 0.02
    RELAXED = 0.2

    def __init__(self, memory: TaskMemory, read: Callable[[], Left | None] = memory_left) -> None:
        self.memory = memory
        self.read = read
        self._last: Left | None = None
        self._read_at = -math.inf
        self.stopped: str | None = None  # what the guard did on this rung, for the runner
        self.held: int | None = None  # the anonymous memory of the worker it stopped
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def admits(self, running: int) -> bool:
        """Whether one more batch may start beside the ``running`` ones: always the first,
        else when one more task of the estimated size still leaves the margin free."""
        estimate = self.memory.estimate
        if running == 0 or not estimate:
            return True
        left = self._recent()
        return left is None or left.free - estimate > left.margin

    def _recent(self) -> Left | None:
        """A reading at most ``INTERVAL`` old: the runner asks before every batch it starts,
        and a reading costs ~0.4 ms."""
        now = time.monotonic()
        if now - self._read_at > self.INTERVAL:
            self._last, self._read_at = self.read(), now
        return self._last

    def fit(self, workers: int) -> int:
        """How many of ``workers`` can each run a task of the estimated size in what is left
        now, the margin kept (at least 0; ``workers`` when unknown)."""
        estimate = self.memory.estimate
        left = self.read()
        if not estimate or left is None:
            return workers
        return max(0, min(workers, (left.free - left.margin) // estimate))

    def watch(self, label: str, pids: Callable[[], list[int]], youngest: YoungestTask) -> None:
        """Start watching for the rung ``label`` whose worker processes ``pids()`` returns."""
        self.stop()
        self.stopped = self.held = None
        self._done = threading.Event()
        thread = threading.Thread(
            target=self._run,
            args=(label, pids, youngest, self._done),
            daemon=True,
            name="stepdown-memory-guard",
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to spare (a full pids group): the rung runs unguarded
            log.debug("%s: no thread for the memory guard; the rung runs unguarded", label)
            return
        self._thread = thread

    def stop(self) -> None:
        if self._thread is not None:
            self._done.set()
            self._thread.join()
            self._thread = None

    def _run(
        self,
        label: str,
        pids: Callable[[], list[int]],
        youngest: YoungestTask,
        done: threading.Event,
    ) -> None:
        interval = self.INTERVAL
        while not done.wait(interval):
            left = self.read()
            # A reading costs ~0.4 ms: look often only when little is left.
            interval = self.INTERVAL if left and left.free < 4 * left.margin else self.RELAXED
            if left is None or left.free >= left.margin:
                continue
            pid = youngest(pids())
            if pid is None:
                continue
            self.held = anonymous(pid)  # what its task had taken: the runner learns from it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            self.stopped = (
                f"{format_size(left.free)} of {format_size(left.limit)} left ({left.where}), "
                f"under the {format_size(left.margin)} margin: stopped the worker (pid {pid}) "
                "running the youngest task"
            )
            log.debug("%s: %s", label, self.stopped)  # the runner's step-down line says it
            return  # the pool breaks; the runner shrinks the rung


class MemoryCare:
    """The run's memory decisions, in one place for the runner (see the module's docstring)."""

    WAIT = 0.25  # how often to look for room while no task fits
    AGAIN = 3  # memory failures of a one-worker process rung, no task ending, before it moves on

    def __init__(self, declared: int | None, patience: float = 30.0) -> None:
        self.task = TaskMemory(declared)
        self.patience = patience  # how long a rung waits for room for its tasks (see _wait)
        self.guard = Guard(self.task)
        self.failed = False  # a rung of this run failed for memory
        self.waits = 0  # memory failures of a one-worker process rung since a task last ended
        self._waited_out = False  # a wait for room used all the patience: none waits again
        self.alone: str | None = None  # why a task did not fit alone in one worker, if so
        # What the tasks of one worker of the process rung running now may add (peak.cap).
        self.share: int | None = None
        self.started = ("", False)  # how its workers start (planning.footprint.kind)
        self._kills = _oom_kills()

    def begin(self, backend: Backend, timeouts: Timeouts) -> None:
        """A rung starts: a process rung's workers are watched, and each gets an equal share
        of what is left, less the margin."""
        if backend.in_process:
            return
        self.started = footprint.kind(backend.name, backend.options)
        left = self.guard.read()
        if left is not None:
            self.share = max(0, left.free - left.margin) // max(1, backend.workers)
        self.guard.watch(backend.label, backend.worker_pids, timeouts.youngest)

    def end(self) -> None:
        self.guard.stop()
        self.share = None

    def admits(self, running: int) -> bool:
        return self.guard.admits(running)

    def observe(self, result: BatchResult) -> None:
        """What a finished batch says about memory: its tasks', its worker's own."""
        self.task.observe(result.peak, result.overran)
        footprint.learn(self.started, result.resident)
        self.waits = 0  # a task ended: the rung makes progress

    def judge(self, failure: ResourceFailure) -> tuple[ResourceFailure, bool]:
        """``failure`` as the runner should take it, and whether the workers' memory caused it
        (fewer workers would help): the guard stopped a worker, or the kernel's OOM killer
        killed one (its counter went up), or a task ran out. Not the caller's own running out
        as it received a result: that result has to come back with fewer workers too."""
        kills, self._kills = self._kills, _oom_kills()
        if self.guard.stopped is not None:
            failure = ResourceFailure(Reason.OUT_OF_MEMORY, self.guard.stopped, failure.rung)
            if self.guard.held is not None:  # a forked worker's count the caller's pages too
                own = 0 if self.started[1] else anonymous(os.getpid()) or 0
                self.task.observe(None, overran=max(0, self.guard.held - own))
        caller = failure.detail.endswith(RECEIVING)
        memory = (failure.reason is Reason.OUT_OF_MEMORY and not caller) or (
            kills is not None and self._kills is not None and self._kills > kills
        )
        self.failed = self.failed or memory
        return failure, memory

    def shrunk(self, workers: int) -> int:
        """Workers for the same rung after a memory failure with ``workers`` (whose memory is
        free again): as many as fit the known task now, else half; at least one, fewer than
        before."""
        fit = self.guard.fit(workers) if self.task.estimate else workers // 2
        return max(1, min(workers - 1, fit))

    @staticmethod
    def room(workers: int, remote: bool) -> bool:
        """Whether a task that ran out of memory on a rung of ``workers`` (``remote``: worker
        processes) can run again with more: the process rung can shrink, or the next rung is
        in-process and smaller anyway. With one worker process, which had all the memory there
        is, its ``MemoryError`` is its outcome: it would not fit beside the caller either."""
        return not remote or workers > 1

    def again(self) -> bool:
        """Whether a one-worker process rung that failed for memory runs again, once one task
        fits (:meth:`room_for_one`). Its worker is the OOM killer's first choice, which the
        caller would be once the task moved in-process: while others hold the memory, the task
        waits isolated. After ``AGAIN`` such failures in a row with no task ending, the ladder
        moves on, and no in-process rung runs what did not fit alone in a worker."""
        self.waits += 1
        if self.waits > self.AGAIN:
            self.alone = f"{self.AGAIN} runs with one worker in a row ran out of memory"
        return self.alone is None

    def room_for_one(self, pause: Callable[[float], None]) -> str | None:
        """Wait (see :meth:`_wait`) until one task fits: ``None``, or why it did not."""
        fit = self._wait(1, 1, pause)
        return fit if isinstance(fit, str) else None

    def in_process(self, workers: int, pause: Callable[[float], None]) -> int | str:
        """Tasks an in-process rung may run at once beside the caller, or why none: after a
        memory failure, only as many as fit what is left (a task that does not fit would take
        the caller down with it). When not one fits, what others hold may be freed soon (other
        jobs on the host finish): ``pause`` up to ``patience`` seconds in all for room."""
        if not self.failed:
            return workers
        if self.alone is not None:  # what did not fit in one worker will not beside the caller
            return f"{self.alone}: it would take the caller down"
        # No task measured to its end (at most a stopped worker's memory, a lower bound): one
        # at a time, and only once that bound fits.
        measured = self.task.learned is not None or self.task.declared is not None
        fit = self._wait(workers if measured else 1, workers, pause)
        return fit if isinstance(fit, int) else f"{fit}: it would take the caller down"

    def _wait(self, most: int, workers: int, pause: Callable[[float], None]) -> int | str:
        """Up to ``most`` of ``workers`` tasks that fit what is left now, else after waiting
        up to ``patience`` seconds for room (looking every ``WAIT``, with a random offset so
        that instances that wait together do not all take the room at once), else why not."""
        estimate = self.task.estimate
        if not estimate:
            return most
        fit = min(most, self.guard.fit(workers))
        if fit:
            return fit
        waited, began = False, time.monotonic()
        patience = 0.0 if self._waited_out else self.patience
        while True:
            left = self.guard.read()
            room = "too little" if left is None else format_size(max(0, left.free - left.margin))
            why = f"a task holds about {format_size(estimate)} and {room} is left"
            spent = time.monotonic() - began
            if spent >= patience:
                self._waited_out = True
                return f"{why} after waiting {spent:.0f} s" if patience else why
            if not waited:
                log.warning("%s; waiting up to %.0f s for memory to come back", why, patience)
                waited = True
            pause(min(self.WAIT * (0.5 + random.random()), patience - spent))
            fit = min(most, self.guard.fit(workers))
            if fit:
                log.info("memory came back after %.1f s: room for %d task(s)", spent, fit)
                return fit

    def charge(self, planned: int) -> int:
        """What one slot of the host budget reserves: the plan's figure, plus the learned
        task where the user declared none (the plan's figure then holds no task)."""
        return planned + (self.task.learned or 0 if self.task.declared is None else 0)


def anonymous(pid: int) -> int | None:
    """The anonymous memory a process holds (``RssAnon``: its data, not its files), or
    ``None`` where it cannot be read."""
    text = read_text(f"/proc/{pid}/status")
    for line in (text or "").splitlines():
        if line.startswith("RssAnon:"):
            fields = line.split()
            return int(fields[1]) * 1024 if len(fields) > 1 and fields[1].isdigit() else None
    return None


def _oom_kills() -> int | None:
    """The kernel's OOM kill count in the caller's memory cgroup (v2 ``memory.events``, v1
    ``memory.oom_control``)."""
    group = _memory_group()
    if group is None:
        return None
    name = "memory.events" if group.version == 2 else "memory.oom_control"
    for directory in group.directories():
        for line in read_text(f"{directory}/{name}").splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None
