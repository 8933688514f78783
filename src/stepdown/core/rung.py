"""Rungs: a backend with a worker cap and options, parsed from ``"loky:3"`` or a table.

The table of backend names lives here, as data, so that a ladder can be checked without
importing any backend (each backend module, and its dependency, loads on first use).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

__all__ = ["BACKENDS", "BackendInfo", "Rung", "parse_ladder", "parse_rung"]


@dataclass(frozen=True)
class BackendInfo:
    """What stepdown knows about a backend before importing it."""

    module: str
    in_process: bool
    options: Mapping[str, type | tuple[type, ...]]
    install: str | None = None


# Options every rung accepts, whatever its backend.
COMMON_OPTIONS: Mapping[str, type | tuple[type, ...]] = {
    "memory_per_worker": (str, int, float),
}

BACKENDS: Mapping[str, BackendInfo] = {
    "sequential": BackendInfo("stepdown.backends.sequential", in_process=True, options={}),
    "thread": BackendInfo("stepdown.backends.thread", in_process=True, options={}),
    "process": BackendInfo(
        "stepdown.backends.process",
        in_process=False,
        options={"start_method": str, "restarts": int},
    ),
    "loky": BackendInfo(
        "stepdown.backends.loky",
        in_process=False,
        options={"restarts": int},
        install="pip install loky",
    ),
    "ray": BackendInfo(
        "stepdown.backends.ray",
        in_process=False,
        options={
            "address": str,
            "max_retries": int,
            "reuse": bool,
            "restarts": int,
            "connect_timeout": (int, float),
            "object_store_memory": (str, int),
        },
        install="pip install 'stepdown[ray]'",
    ),
}

START_METHODS = ("fork", "forkserver", "spawn")


@dataclass(frozen=True)
class Rung:
    """One step of a ladder. ``workers=None`` means "as many as the plan allows" (``auto``)."""

    backend: str
    workers: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> BackendInfo:
        return BACKENDS[self.backend]

    @property
    def in_process(self) -> bool:
        return self.info.in_process

    def label(self, workers: int | None = None) -> str:
        """``"loky(3)"``: the backend with the workers it runs (or its cap)."""
        n = workers if workers is not None else self.workers
        if self.backend == "sequential":
            return "sequential"
        return f"{self.backend}({'auto' if n is None else n})"

    def __str__(self) -> str:
        return self.label()


def _unknown_backend(name: object, where: str) -> UsageError:
    known = ", ".join(BACKENDS)
    return UsageError(f"{where}: unknown backend {name!r}; known backends: {known}")


def _parse_workers(value: object, where: str) -> int | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise UsageError(
                f"{where}: workers must be a positive whole number or 'auto', not {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(
            f"{where}: workers must be a positive whole number or 'auto', not {value!r}"
        )
    if value <= 0:
        raise UsageError(f"{where}: workers must be at least 1, not {value}")
    return value


def parse_rung(spec: str | Mapping[str, Any] | Rung, where: str = "rung") -> Rung:
    """Parse ``"loky:3"``, ``"thread:auto"``, ``"sequential"`` or a table with options.

    Raises :class:`UsageError` naming ``where`` (a key path such as ``ladder[0]``).
    """
    if isinstance(spec, Rung):
        return spec
    if isinstance(spec, str):
        name, sep, count = spec.strip().partition(":")
        name = name.strip()
        if name not in BACKENDS:
            raise _unknown_backend(name, where)
        workers = _parse_workers(count.strip() if sep else None, where)
        if name == "sequential":
            workers = 1
        return Rung(name, workers)
    if isinstance(spec, Mapping):
        table = dict(spec)
        name = table.pop("backend", None)
        if name is None:
            raise UsageError(f"{where}: a rung table needs a 'backend' key")
        if not isinstance(name, str) or name not in BACKENDS:
            raise _unknown_backend(name, f"{where}.backend")
        workers = _parse_workers(table.pop("workers", None), f"{where}.workers")
        allowed = {**COMMON_OPTIONS, **BACKENDS[name].options}
        for key, value in table.items():
            if key not in allowed:
                raise UsageError(
                    f"{where}: unknown option {key!r} for backend {name!r}; "
                    f"allowed: backend, workers{''.join(', ' + k for k in allowed)}"
                )
            expected = allowed[key]
            if isinstance(value, bool) and expected is not bool:
                raise UsageError(f"{where}.{key}: unexpected value {value!r}")
            if not isinstance(value, expected):
                raise UsageError(f"{where}.{key}: unexpected value {value!r}")
            if expected is int and isinstance(value, int) and value < 0:
                raise UsageError(f"{where}.{key}: must be 0 or more, not {value}")
        method = table.get("start_method")
        if method is not None and method not in START_METHODS:
            raise UsageError(
                f"{where}.start_method: {method!r} is not one of {', '.join(START_METHODS)}"
            )
        if name == "sequential":
            workers = 1
        return Rung(name, workers, table)
    raise UsageError(
        f"{where}: a rung is a string such as 'loky:3' or a table with a 'backend' key, "
        f"not {type(spec).__name__}"
    )


def parse_ladder(specs: object, where: str = "ladder") -> list[Rung]:
    """Parse a ladder and append ``sequential`` if it is not already last."""
    if isinstance(specs, (str, Mapping, Rung)):
        specs = [specs]
    if not isinstance(specs, (list, tuple)):
        raise UsageError(f"{where}: a ladder is a list of rungs, not {type(specs).__name__}")
    if not specs:
        raise UsageError(f"{where}: a ladder needs at least one rung")
    rungs = [parse_rung(spec, f"{where}[{i}]") for i, spec in enumerate(specs)]
    if rungs[-1].backend != "sequential":
        rungs.append(Rung("sequential", 1))
    return rungs
