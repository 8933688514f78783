"""stepdown: run one function over many inputs on the best executor the machine can afford,
and step down — process pool, thread pool, sequential — without losing a finished result.

>>> import stepdown
>>> stepdown.map(abs, [-1, -2, 3], ladder=["thread:2"])
[1, 2, 3]

The public names load on first use, so ``import stepdown`` stays cheap (and so does importing
``stepdown.core.batch`` in a worker process).
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing alone costs more than the rest of this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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
    from .core.plan import Plan, plan
    from .core.report import Report

__all__ = [
    "BackendUnavailable",
    "Executor",
    "Plan",
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
    "plan",
    "run",
]

__version__ = "0.1.0"

_WHERE = {
    "Run": "api",
    "imap": "api",
    "map": "api",
    "run": "api",
    "Executor": "executor",
    "Plan": "plan",
    "plan": "plan",
    "Report": "report",
    "BackendUnavailable": "errors",
    "PolicyError": "errors",
    "Reason": "errors",
    "ResourceFailure": "errors",
    "StepdownError": "errors",
    "TaskCrashed": "errors",
    "UsageError": "errors",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'stepdown' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"stepdown.core.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
