"""Sizes and fractions as people write them (``"1.5GiB"``, ``"512 MB"``, ``"15%"``), values
shown in messages, and the one way every ``STEPDOWN_*`` variable is read.

A variable set to nothing (``STEPDOWN_CPUS= cmd``) is unset, as shells users expect. A value
stepdown cannot use is a :class:`~stepdown.errors.UsageError` naming the variable and the
value, never a warning: the variable was set on purpose, and a run sized without it may not
fit (``docs/deployment.md`` has the table of variables).

A size is at most :data:`MAX_SIZE` (1 EiB): no machine has more, and a bound keeps a typo such as
a 400-digit byte count from overflowing a float or printing as a wall of digits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from .errors import UsageError

__all__ = [
    "MAX_SIZE",
    "bad_variable",
    "format_size",
    "parse_fraction",
    "parse_size",
    "shown",
    "variable",
]

MAX_SIZE = 1024**6

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int | float) -> int:
    """Bytes from ``"1.5GiB"``, ``"300M"``, ``"1024"`` or a number, at most :data:`MAX_SIZE`.
    Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    number: int | float
    if isinstance(value, (int, float)):
        if value < 0 or value != value:
            raise ValueError(f"a size cannot be {shown(value)}")
        number = value
    else:
        match = _SIZE.match(value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(
                f"not a size: {shown(value)} (write e.g. '1.5GiB', '512MB' or a byte count)"
            )
        # A float: 400 digits overflow to inf, which the bound below refuses.
        number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not number <= MAX_SIZE:
        raise ValueError(f"a size must be at most 1 EiB ({MAX_SIZE} bytes), not {shown(value)}")
    return int(number)


def parse_fraction(value: str | int | float) -> float:
    """A fraction in [0, 1) from ``"15%"`` or ``0.15``. Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"not a fraction: {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"not a fraction: {shown(value)} (write e.g. '15%' or 0.15)") from None
    else:
        number = float(value) if not isinstance(value, int) or abs(value) < 2**64 else math.inf
    if not 0 <= number < 1:
        raise ValueError(f"a fraction must be at least 0 and below 1 (100%), not {shown(value)}")
    return number


_SHOWN_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(n: int | float | None) -> str:
    """``1610612736`` → ``"1.5 GiB"``; beyond the largest unit, ``"8.27e+66 EiB"``, never a wall
    of digits (a cgroup's "no limit" reads as about 8 EiB)."""
    if n is None:
        return "unknown"
    try:
        size = float(n)
    except OverflowError:  # an integer beyond any float
        size = math.inf if n > 0 else -math.inf
    for unit in _SHOWN_UNITS:
        if abs(size) < 1024 or unit == _SHOWN_UNITS[-1]:
            break
        size /= 1024
    if unit == "B":
        return f"{size:.0f} B"
    return f"{size:.1f} {unit}" if abs(size) < 10_000 else f"{size:.3g} {unit}"


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters: a value read from a file or
    a variable may be a megabyte long, an integer too long to print, or nested too deeply."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return "(too deeply nested or too long to show)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def variable(environ: Mapping[str, str], name: str) -> str | None:
    """The variable's value with spaces stripped; ``None`` when it is unset or empty."""
    return environ.get(name, "").strip() or None


def bad_variable(name: str, value: str, why: str) -> UsageError:
    """The error for a variable whose value cannot be used: ``why`` says what it may be."""
    return UsageError(f"{name}={shown(value)}: {why}; correct it, or unset it")
