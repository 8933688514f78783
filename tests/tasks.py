"""Task functions for the tests: importable, so every backend can pickle them by reference."""

from __future__ import annotations

import os
import time


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


def _touch(directory: str, name: str) -> None:
    with open(os.path.join(directory, name), "x"):
        pass


def recorded(item: tuple[str, int]) -> int:
    """Leaves ``start-<i>-<pid>-<n>`` and ``done-<i>-...`` files: executions can be counted."""
    directory, x = item
    tag = f"{x}-{os.getpid()}-{time.monotonic_ns()}"
    _touch(directory, f"start-{tag}")
    busy = time.perf_counter() + 0.05
    while time.perf_counter() < busy:
        pass
    _touch(directory, f"done-{tag}")
    return x * x


def executions(directory: str, kind: str = "start") -> dict[int, int]:
    """How many times each index started (or finished, ``kind="done"``)."""
    counts: dict[int, int] = {}
    for name in os.listdir(directory):
        if name.startswith(kind + "-"):
            index = int(name.split("-")[1])
            counts[index] = counts.get(index, 0) + 1
    return counts


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
