"""Tasks for joblib's worker processes that never import stepdown themselves.

A loky worker is a fresh interpreter that imports only what it unpickles: when one of these
tasks opens ``Parallel(backend="stepdown")`` there, the name resolves only if the worker learnt
it from the batch it was sent (see ``stepdown.integrations.joblib_name``).
"""

from __future__ import annotations

import os

from joblib import Parallel, delayed, parallel_config


def pid(_: int) -> int:
    return os.getpid()


def nested(_: int) -> dict[str, object]:
    """Run a nested Parallel on the backend "stepdown" and say where and on what it ran."""
    with parallel_config(backend="stepdown", n_jobs=2, ladder=["thread:2"]) as config:
        pids = Parallel()(delayed(pid)(j) for j in range(4))
    backend = config["backend"]
    return {
        "pid": os.getpid(),
        "backend": type(backend).__name__,
        "inner_pids": sorted(set(pids)),
        "report": str(backend.last_report),
    }
