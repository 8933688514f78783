"""Rungs: a backend with a worker cap and options, parsed from ``"loky:3"`` or a table.

Backends are checked against the registry (:mod:`stepdown.backends.registry`), which is data:
a ladder is checked without importing any backend module or its dependency.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..backends.registry import (
    COMMON_OPTIONS,
    BackendInfo,
    backend_names,
    info,
    known,
    last_backend,
)
from ..errors import UsageError
from ..records import field, record
from ..units import shown

__all__ = ["START_METHODS", "Rung", "ending_last", "parse_ladder", "parse_rung"]

START_METHODS = ("auto", "fork", "forkserver", "spawn")


@record(frozen=True)
class Rung:
    """One step of a ladder. ``workers=None`` means "as many as the plan allows" (``auto``)."""

    backend: str
    workers: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> BackendInfo:
        return info(self.backend)

    @property
    def in_process(self) -> bool:
        return self.info.in_process

    def label(self, workers: int | None = None) -> str:
        """``"loky(3)"``: the backend with the workers it runs (or its cap)."""
        n = workers if workers is not None else self.workers
        if self.info.single:
            return self.backend
        return f"{self.backend}({'auto' if n is None else n})"

    def __str__(self) -> str:
        return self.label()


def _unknown_backend(name: object, where: str) -> UsageError:
    names = ", ".join(backend_names())
    return UsageError(f"{where}: unknown backend {shown(name)}; known backends: {names}")


def _parse_workers(value: object, where: str) -> int | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise UsageError(
                f"{where}: workers must be a positive whole number or 'auto', not {shown(value)}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(
            f"{where}: workers must be a positive whole number or 'auto', not {shown(value)}"
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
        if not known(name):
            raise _unknown_backend(name, where)
        workers = _parse_workers(count.strip() if sep else None, where)
        return Rung(name, 1 if info(name).single else workers)
    if isinstance(spec, Mapping):
        table = dict(spec)
        name = table.pop("backend", None)
        if name is None:
            raise UsageError(f"{where}: a rung table needs a 'backend' key")
        if not isinstance(name, str) or not known(name):
            raise _unknown_backend(name, f"{where}.backend")
        workers = _parse_workers(table.pop("workers", None), f"{where}.workers")
        allowed = {**COMMON_OPTIONS, **info(name).options}
        for key, value in table.items():
            if key not in allowed:
                raise UsageError(
                    f"{where}: unknown option {shown(key)} for backend {shown(name)}; "
                    f"allowed: backend, workers{''.join(', ' + k for k in allowed)}"
                )
            expected = allowed[key]
            if isinstance(value, bool) and expected is not bool:
                raise UsageError(f"{where}.{key}: unexpected value {shown(value)}")
            if not isinstance(value, expected):
                raise UsageError(f"{where}.{key}: unexpected value {shown(value)}")
            if expected is int and isinstance(value, int) and value < 0:
                raise UsageError(f"{where}.{key}: must be 0 or more, not {value}")
        method = table.get("start_method")
        methods = info(name).start_methods or START_METHODS
        if method is not None and method not in methods:
            raise UsageError(
                f"{where}.start_method: {shown(method)} is not one of {', '.join(methods)}"
                + ("" if "fork" in methods else f" ({name} starts its workers its own way)")
            )
        return Rung(name, 1 if info(name).single else workers, table)
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
    return list(ending_last(parse_rung(spec, f"{where}[{i}]") for i, spec in enumerate(specs)))


def ending_last(rungs: Iterable[Rung]) -> tuple[Rung, ...]:
    """The rungs, with the last backend (``sequential``) appended if it does not end them."""
    ladder = tuple(rungs)
    if not ladder or not ladder[-1].info.last:
        ladder = (*ladder, Rung(last_backend(), 1))
    return ladder
