"""Task functions for the tests: importable, so every backend can pickle them by reference.

Executions are counted with :func:`record` / :func:`counts`: one file per call in a directory,
so counts survive killed workers and work across processes and threads, because nothing is
shared but the directory.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from pathlib import Path


class TaskBug(Exception):
    """A task's own exception, with an attribute, to check it arrives unchanged."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.01)
    return x * x


def fails_on_7(x: int) -> int:
    if x == 7:
        raise TaskBug("seven is bad", 7)
    return x


def pid(_: object) -> int:
    return os.getpid()


def counting_dir(tmp_path: Path) -> str:
    """A fresh directory for :func:`record`, as a string so it pickles into any worker."""
    directory = tmp_path / f"calls-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    return str(directory)


def record(directory: str | os.PathLike[str], index: int, phase: str = "start") -> None:
    """Leave one file, ``<phase>-<index>-<pid>-<uuid>``, for this execution of task ``index``."""
    name = f"{phase}-{index}-{os.getpid()}-{uuid.uuid4().hex}"
    with open(os.path.join(directory, name), "x"):
        pass


def counts(directory: str | os.PathLike[str], phase: str = "start") -> collections.Counter[int]:
    """Index -> how many times :func:`record` ran for it in ``phase`` (``"start"``, ``"done"``)."""
    return collections.Counter(
        int(name.split("-")[1]) for name in os.listdir(directory) if name.startswith(phase + "-")
    )


def recorded(item: tuple[str, int]) -> int:
    """About 50 ms of CPU between a start and a done record: executions can be counted."""
    directory, x = item
    record(directory, x, "start")
    busy = time.perf_counter() + 0.05
    while time.perf_counter() < busy:
        pass
    record(directory, x, "done")
    return x * x


def poison_13(x: int) -> int:
    """Kills whatever process runs it, every time, for x == 13."""
    if x == 13:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.005)
    return x


def huge_for_5(x: int) -> int:
    """A real MemoryError for x == 5: the kernel refuses a petabyte."""
    if x == 5:
        return len(bytearray(2**50))
    return x


# Set at the end of a test to let hung in-process tasks return (a thread cannot be stopped); in a
# worker process it is never set: only the kill that task_timeout does ends the wait.
RELEASE = threading.Event()


def hangs_on_3(item: tuple[str, int]) -> int:
    """Record the call (with its pid), then, for index 3, hang until released or killed."""
    directory, index = item
    record(directory, index)
    if index == 3:
        RELEASE.wait(3600)
    return index


def sleeps_or_hangs(item: tuple[float | None, int]) -> int:
    """Sleep ``item[0]`` seconds (``None``: hang until released or killed), return ``item[1]``."""
    seconds, value = item
    if seconds is None:
        RELEASE.wait(3600)
    else:
        time.sleep(seconds)
    return value
