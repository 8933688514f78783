"""Every fact about every backend, in one table: the planner, the runner, ``stepdown doctor`` and
the error boundary ask it, and nothing else names a backend.

A backend is one module that defines ``BACKEND`` (a :class:`~stepdown.backends.base.Backend`
subclass) plus one :class:`BackendInfo` here. The table is data: a ladder can be checked, a plan
made and a failure classified without importing any backend module or its dependency.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable, Reason, UsageError
from ..records import field, record

if TYPE_CHECKING:
    from .base import Backend

__all__ = [
    "COMMON_OPTIONS",
    "BackendInfo",
    "Failure",
    "backend_names",
    "info",
    "infos",
    "known",
    "last_backend",
    "load_backend",
    "register",
]


@record(frozen=True)
class Failure:
    """A native failure of a backend's executor, recognised by class name (never imported).

    It matches an exception with a class named one of ``names`` in its MRO; also one named
    ``within`` when that is set (Ray's ``"RayError"``, so only Ray's classes match), and whose
    message contains ``message`` (lower case) when that is set.
    """

    names: frozenset[str]
    reason: Reason
    within: str | None = None
    message: str | None = None


@record(frozen=True)
class BackendInfo:
    """What stepdown knows about a backend before importing it.

    ``in_process``: tasks run in the caller's process (they share its memory, and one that kills
    its process kills the caller). ``local``: workers run on this host, so this host's CPUs,
    memory and pids size the rung (a Ray cluster's do not). ``pids``: (per worker, fixed) threads
    and processes a rung counts against ``pids.max``; ``None`` if it is not limited by them.
    ``single``: one task at a time, in the caller: it has no worker count. ``last``: the rung
    every ladder ends with, always granted its slot of the host budget so every instance makes
    progress. ``dependency``/``distribution``: the module it imports and the package providing
    it (``stepdown doctor`` checks them); ``install``: the command that installs it.
    ``failures``: its executor's own failure classes; ``wrappers``: its classes that carry the
    real failure in ``.cause``. ``fresh``: its workers are fresh interpreters, sharing no pages
    with the caller (a backend with a ``start_method`` option: as that method says).
    ``start_methods``: the values its ``start_method`` option takes; ``forks_as``: the backend
    a rung of it becomes where ``start_method = "auto"`` finds a fork safe (see the planner).
    """

    name: str
    module: str
    in_process: bool
    options: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    local: bool = True
    pids: tuple[int, int] | None = None
    single: bool = False
    last: bool = False
    dependency: str | None = None
    distribution: str | None = None
    install: str | None = None
    failures: tuple[Failure, ...] = ()
    wrappers: frozenset[str] = frozenset()
    fresh: bool = False
    start_methods: tuple[str, ...] = ()
    forks_as: str | None = None


# Options every rung accepts, whatever its backend.
COMMON_OPTIONS: Mapping[str, type | tuple[type, ...]] = MappingProxyType(
    {"memory_per_worker": (str, int, float)}
)

# Pids: a thread worker is one thread; a process worker is its process plus its own threads (1-2
# for the stdlib, a few for loky): 4, to be safe. The fixed part is the pool's manager and
# queue-feeder threads, plus the forkserver or loky's resource tracker.
_REGISTRY: dict[str, BackendInfo] = {
    info.name: info
    for info in (
        BackendInfo(
            "sequential", "stepdown.backends.sequential", in_process=True, single=True, last=True
        ),
        BackendInfo("thread", "stepdown.backends.thread", in_process=True, pids=(1, 1)),
        BackendInfo(
            "process",
            "stepdown.backends.process",
            in_process=False,
            options={"start_method": str, "restarts": int},
            start_methods=("auto", "fork", "forkserver", "spawn"),
            forks_as="process",
            pids=(4, 3),
            failures=(
                Failure(
                    frozenset({"BrokenProcessPool"}),
                    Reason.WORKER_DIED,
                    message="terminated abruptly",
                ),
            ),
        ),
        BackendInfo(
            "loky",
            "stepdown.backends.loky",
            in_process=False,
            # Only "auto": a fork-started process pool where that is safe (the planner decides).
            options={"start_method": str, "restarts": int},
            start_methods=("auto",),
            forks_as="process",
            pids=(4, 4),
            dependency="loky",
            distribution="loky",
            install="pip install loky",
            failures=(
                Failure(frozenset({"TerminatedWorkerError"}), Reason.WORKER_DIED),
                Failure(frozenset({"ShutdownExecutorError"}), Reason.EXECUTOR_BROKEN),
            ),
            fresh=True,
        ),
        BackendInfo(
            "ray",
            "stepdown.backends.ray.backend",
            in_process=False,
            options={
                "address": str,
                "max_retries": int,
                "reuse": bool,
                "restarts": int,
                "connect_timeout": (int, float),
                "object_store_memory": (str, int),
            },
            local=False,
            dependency="ray",
            distribution="ray",
            install="pip install 'stepdown[ray]'",
            # Ray's others (RaySystemError, OutOfDiskError, ObjectLostError, ...) fall through:
            # the executor broke.
            failures=(
                Failure(
                    frozenset({"OutOfMemoryError", "ObjectStoreFullError"}),
                    Reason.OUT_OF_MEMORY,
                    within="RayError",
                ),
                Failure(
                    frozenset(
                        {
                            "WorkerCrashedError",
                            "RayActorError",
                            "NodeDiedError",
                            "LocalRayletDiedError",
                        }
                    ),
                    Reason.WORKER_DIED,
                    within="RayError",
                ),
                Failure(frozenset({"GetTimeoutError"}), Reason.EXECUTOR_STALLED, within="RayError"),
            ),
            # A RayTaskError is raised for anything that escaped the batch wrapper in a worker (a
            # function that cannot be unpickled there, ...): the original is its `cause`.
            wrappers=frozenset({"RayTaskError"}),
        ),
    )
}


def backend_names() -> tuple[str, ...]:
    """Every known backend, in the order they are listed (and shown)."""
    return tuple(_REGISTRY)


def info(name: str) -> BackendInfo:
    """The facts about backend ``name``; :class:`UsageError` naming the known ones if unknown."""
    found = _REGISTRY.get(name)
    if found is None:
        raise UsageError(f"unknown backend {name!r}; known backends: {', '.join(_REGISTRY)}")
    return found


def known(name: object) -> bool:
    """Whether ``name`` is a registered backend."""
    return isinstance(name, str) and name in _REGISTRY


def infos() -> tuple[BackendInfo, ...]:
    """Every backend's facts, in order."""
    return tuple(_REGISTRY.values())


def last_backend() -> str:
    """The backend every ladder ends with (``sequential``)."""
    return next(i.name for i in _REGISTRY.values() if i.last)


def register(backend: BackendInfo) -> None:
    """Add a backend (or replace one of the same name). Its module is imported on first use.

    A second backend marked ``last`` is refused: every ladder ends with exactly one.
    """
    if backend.last and backend.name != last_backend():
        raise UsageError(f"backend {backend.name!r}: only one backend can be the last rung")
    _REGISTRY[backend.name] = backend


def load_backend(name: str) -> type[Backend]:
    """The backend class for ``name``, importing its module (and dependency) now.

    A missing dependency raises :class:`BackendUnavailable` naming the install command.
    """
    found = info(name)
    try:
        module: Any = importlib.import_module(found.module)
    except ImportError as exc:
        hint = f"; install it with: {found.install}" if found.install else ""
        raise BackendUnavailable(f"cannot import {exc.name or found.module}{hint}") from exc
    cls: type[Backend] = module.BACKEND
    return cls
