"""Checking one value of a policy table: a table, its keys, a whole number, a size, a fraction.

Each raises :class:`~stepdown.errors.PolicyError` naming ``source`` (the file) and ``where``
(the key path), and says what was found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import PolicyError
from ...units import parse_fraction, parse_size, shown
from .model import DEFAULT_MEMORY_HEADROOM

__all__ = [
    "as_fraction",
    "as_headroom",
    "as_size",
    "as_table",
    "as_whole",
    "check_keys",
    "describe",
    "key_part",
]


def describe(value: object) -> str:
    """What a value is, for a message: ``an integer (3)``, ``a table``, ..."""
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, int):
        return f"an integer ({shown(value)})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({shown(value)})"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    if value is None:
        return "nothing (None)"
    return f"a {type(value).__name__}"


def as_table(value: object, source: str, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"expected a table, found {describe(value)}", source, where)
    return value


def key_part(key: object) -> str:
    """A key as a part of a key path: itself if it is a short string, else shown."""
    return key if isinstance(key, str) and len(key) <= 40 else shown(key)


def check_keys(table: Mapping[Any, Any], allowed: tuple[str, ...], source: str, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise PolicyError(
                f"unknown key {shown(key)}; allowed: {', '.join(allowed)}",
                source,
                f"{where}.{key_part(key)}" if where else key_part(key),
            )


def as_whole(
    value: object, minimum: int, source: str, where: str, maximum: int | None = None
) -> int:
    expected = f"a whole number >= {minimum}" + (
        f" and <= {maximum}" if maximum is not None else ""
    )
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"expected {expected}, found {describe(value)}", source, where)
    if value < minimum or (maximum is not None and value > maximum):
        raise PolicyError(f"expected {expected}, not {shown(value)}", source, where)
    return value


def as_size(value: object, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PolicyError(
            f"expected a size such as '1.5GiB' or a byte count, found {describe(value)}",
            source,
            where,
        )
    try:
        return parse_size(value)
    except (ValueError, OverflowError) as exc:
        raise PolicyError(str(exc), source, where) from None


def as_headroom(value: object, source: str, where: str) -> float:
    if value is None:
        return DEFAULT_MEMORY_HEADROOM
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PolicyError(
            f"expected a fraction such as '15%' or 0.15, found {describe(value)}", source, where
        )
    try:
        return parse_fraction(value)
    except (ValueError, OverflowError) as exc:
        raise PolicyError(str(exc), source, where) from None


def as_fraction(value: object, source: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise PolicyError(
            f"expected a number above 0 and at most 1 (0.5 = half), found {describe(value)}",
            source,
            where,
        )
    return float(value)
