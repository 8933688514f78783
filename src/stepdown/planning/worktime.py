"""What one task of a function took in earlier runs: the planner's figure for a job's work.

At the end of a run the runner records the seconds one task of its function took (measured
where it ran, batch by batch); a later run of the same function, in this process or the next
script run, plans with the latest figure (the tasks a script gives its function change with its
data: the last run is the best guess for the next). The figures live in the start-up cost cache
(:mod:`.startup_cache`: per user, checked like the host budget) as kind ``task:<key>``, for at
most ``KEEP`` functions. A function has a key when it can be found again by name: a module's
function, or the main script's with that script's path; lambdas and nested functions have none.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import UsageError
from .startup_cache import SAMPLES, Figures, cached, is_seconds, update

__all__ = ["KEEP", "key_of", "record", "seconds"]

log = logging.getLogger("stepdown")

KEEP = 32
_PREFIX = "task:"


def key_of(fn: Callable[..., Any]) -> str | None:
    """``module:qualname`` of ``fn`` (the main script's: with its path), or ``None``."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str) or "<" in name:
        return None
    if module == "__main__":
        path = getattr(sys.modules.get("__main__"), "__file__", None)
        if not isinstance(path, str):
            return None
        module = os.path.abspath(path)
    return f"{module}:{name}"


def seconds(key: str | None) -> float | None:
    """What one task of the function ``key`` took in its last run, if recorded."""
    if key is None:
        return None
    figures = cached().get(_PREFIX + key)
    samples = figures.get("samples") if figures else None
    return float(samples[-1]) if samples else None


def record(key: str | None, per_task: float | None) -> None:
    """Fold what one task took in this run into the cache, when it is new (not within 25%
    of the last figure: a file written on every run would cost more than it tells). Never
    raises."""
    if key is None or per_task is None or not is_seconds(per_task):
        return
    known = seconds(key)
    if known and 0.8 < per_task / known < 1.25:
        return

    def fold(kinds: dict[str, Figures]) -> None:
        figures = kinds.setdefault(_PREFIX + key, {})
        figures["samples"] = [*figures.get("samples", []), float(per_task)][-SAMPLES:]
        figures["recorded"] = figures.get("recorded", 0) + 1
        figures["last"] = time.time()
        tasks = sorted((k for k in kinds if k.startswith(_PREFIX)), key=_last_of(kinds))
        for old in tasks[:-KEEP]:
            del kinds[old]

    try:
        update(fold)
    except (OSError, UsageError, ValueError) as exc:
        log.debug("task time of %s not recorded: %s", key, exc)


def _last_of(kinds: dict[str, Figures]) -> Callable[[str], float]:
    return lambda kind: float(kinds[kind].get("last", 0.0))
