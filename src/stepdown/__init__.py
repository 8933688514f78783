"""stepdown: run one function over many inputs on the best executor the machine can afford,
and step down — process pool, thread pool, sequential — without losing a finished result.

>>> import stepdown
>>> stepdown.map(abs, [-1, -2, 3], ladder=["thread:2"])
[1, 2, 3]
"""

from __future__ import annotations

from .core.api import Run, imap, map, run
from .core.errors import (
    BackendUnavailable,
    PolicyError,
    Reason,
    ResourceFailure,
    StepdownError,
    TaskCrashed,
    UsageError,
)
from .core.executor import Executor
from .core.report import Report

__all__ = [
    "BackendUnavailable",
    "Executor",
    "PolicyError",
    "Reason",
    "Report",
    "ResourceFailure",
    "Run",
    "StepdownError",
    "TaskCrashed",
    "UsageError",
    "imap",
    "map",
    "run",
]

__version__ = "0.1.0"
