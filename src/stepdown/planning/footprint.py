"""What a worker process holds of its own, by how it starts: what ``memory_per_worker = "auto"``
charges each worker of a process rung.

A forked worker is a copy of the caller: it shares the caller's pages until it writes to them,
and a worker that touches the caller's objects (a reference count is a write) comes to copy
them, so it is charged the caller's resident size. A fresh interpreter (loky, forkserver,
spawn) shares nothing with the caller and holds only what it imports: it is charged the most a
worker of its kind was measured to hold before its tasks (each batch reports it, see
``runner/peak.py``), or :data:`FRESH_DEFAULT` until one was.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Mapping
from typing import Any

from ..backends.registry import info
from .launch import FRESH_METHODS
from .rung import Rung

__all__ = ["FRESH_DEFAULT", "charge", "kind", "learn"]

# A fresh worker measures 15-25 MiB here (an interpreter, stepdown and the pool's worker loop),
# before the task's own imports: room for a few of those.
FRESH_DEFAULT = 64 << 20

_measured: dict[str, int] = {}
_lock = threading.Lock()


def kind(backend: str, options: Mapping[str, Any]) -> tuple[str, bool]:
    """How workers of ``backend`` with rung ``options`` start (its start method where it takes
    one, else the backend), and whether that makes them fresh interpreters."""
    described = info(backend)
    if described.fresh or "start_method" not in described.options:  # loky's is only "auto"
        return backend, described.fresh
    method = options.get("start_method")
    if not isinstance(method, str):
        method = multiprocessing.get_start_method(allow_none=True) or _platform_default()
    return method, method in FRESH_METHODS


def _platform_default() -> str:
    methods = multiprocessing.get_all_start_methods()
    return methods[0] if methods else "spawn"  # the platform's default comes first


def charge(rung: Rung, caller_rss: int | None) -> int | None:
    """What one worker of ``rung`` holds of its own: see the module's docstring."""
    started, fresh = kind(rung.backend, rung.options)
    if not fresh:
        return caller_rss
    with _lock:
        return _measured.get(started, FRESH_DEFAULT)


def learn(started: tuple[str, bool], resident: int | None) -> None:
    """A worker started as ``started`` (see :func:`kind`) held ``resident`` bytes before the
    tasks of a batch."""
    name, fresh = started
    if resident is None or not fresh:
        return
    with _lock:
        _measured[name] = max(resident, _measured.get(name, 0))
