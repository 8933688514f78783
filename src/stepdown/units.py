"""Sizes and fractions as people write them: ``"1.5GiB"``, ``"512 MB"``, ``"15%"``."""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_fraction", "parse_size"]

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
    """Bytes from ``"1.5GiB"``, ``"300M"``, ``"1024"`` or a number. Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value == float("inf"):
            raise ValueError(f"a size cannot be {value!r}")
        return int(value)
    match = _SIZE.match(value)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (write e.g. '1.5GiB', '512MB' or a byte count)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_fraction(value: str | int | float) -> float:
    """A fraction in [0, 1) from ``"15%"`` or ``0.15``. Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"not a fraction: {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"not a fraction: {value!r} (write e.g. '15%' or 0.15)") from None
    else:
        number = float(value)
    if not 0 <= number < 1:
        raise ValueError(f"a fraction must be at least 0 and below 1 (100%), not {value!r}")
    return number


def format_size(n: int | float | None) -> str:
    """``1610612736`` → ``"1.5 GiB"``."""
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
