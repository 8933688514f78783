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
