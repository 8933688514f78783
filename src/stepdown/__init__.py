"""stepdown: run one function over many inputs on the best executor the machine can afford,
and step down — process pool, thread pool, sequential — without losing a finished result.

>>> import stepdown
>>> stepdown.map(abs, [-1, -2, 3], ladder=["thread:2"])
[1, 2, 3]

The data path, one way::

    fn, items, options ──▶ api / executor / integrations.joblib / cli     (the public face)
                               │ Options: every option, checked once
                               ▼
                       planning.setup.prepare                                (set up once)
                               │ policy loaded, profile chosen, machine probed,
                               │ host budget built, plan made (planning.planner, pure)
                               ▼
                       runner.engine.Engine                                  (the state machine)
                               │ rungs in order; a failure is translated at one boundary
                               │ (backends.failures) and decided (runner.decide)
                               ▼
                       backends.<name> ◀── backends.registry: every fact about a backend
                               │ each batch runs inside runner.batch.run_batch (in a worker)
                               ▼
                       results, in order or as completed ──▶ runner.report.Report

Folders, one job each: ``planning/`` decides (rungs, policy, resources, plan), ``budget/`` shares
a host between instances, ``runner/`` runs (engine, batches, isolation, warm pools, report),
``backends/`` holds the interface, the registry and each backend, ``integrations/`` joblib,
``cli/`` the ``stepdown`` command.

The public names load on first use, so ``import stepdown`` stays cheap (and so does importing
``stepdown.runner.batch`` in a worker process). Importing stepdown makes ``"stepdown"`` a joblib
backend name without importing joblib (``integrations.joblib_name``).
"""

from __future__ import annotations

import importlib

from .integrations import joblib_name

# Not typing.TYPE_CHECKING: importing typing alone costs more than the rest of this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .api import Run, finished, imap, map, run
    from .errors import (
        BackendUnavailable,
        InitializerFailed,
        PolicyError,
        Reason,
        ResourceFailure,
        StepdownError,
        TaskCrashed,
        TaskTimeout,
        UsageError,
    )
    from .executor import Executor
    from .planning.plan import Plan
    from .planning.setup import plan
    from .runner.report import Report

__all__ = [
    "BackendUnavailable",
    "Executor",
    "InitializerFailed",
    "Plan",
    "PolicyError",
    "Reason",
    "Report",
    "ResourceFailure",
    "Run",
    "StepdownError",
    "TaskCrashed",
    "TaskTimeout",
    "UsageError",
    "finished",
    "imap",
    "map",
    "plan",
    "run",
]

__version__ = "0.1.0"

_WHERE = {
    "Run": "api",
    "finished": "api",
    "imap": "api",
    "map": "api",
    "run": "api",
    "Executor": "executor",
    "Plan": "planning.plan",
    "plan": "planning.setup",
    "Report": "runner.report",
    "BackendUnavailable": "errors",
    "PolicyError": "errors",
    "Reason": "errors",
    "ResourceFailure": "errors",
    "StepdownError": "errors",
    "TaskCrashed": "errors",
    "TaskTimeout": "errors",
    "InitializerFailed": "errors",
    "UsageError": "errors",
}


joblib_name.watch()


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'stepdown' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"stepdown.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
