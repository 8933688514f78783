"""A figure and where it came from, and reading files that may not be there.

Probing never raises: a source that cannot read gives ``None`` (or ``""`` for a file), and the
smallest figure read wins.
"""

from __future__ import annotations

from ..records import record

__all__ = ["Reading", "read_text", "smaller", "smallest", "under"]


@record(frozen=True)
class Reading:
    """One figure and where it came from. ``value=None``: could not read, or no limit."""

    value: int | None
    source: str


def under(root: str, path: str) -> str:
    """``path`` below ``root`` (a fixture tree in tests; ``/`` for the real machine)."""
    return path if root in ("", "/") else root.rstrip("/") + path


def read_text(path: str) -> str:
    """The file's text, or "" when it cannot be read (every parser reads "" as no figure)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def smaller(best: Reading | None, value: int | None, source: str) -> Reading | None:
    """``best``, or a new reading if ``value`` is smaller; ties keep ``best`` (the inner group)."""
    if value is None or (best is not None and best.value is not None and best.value <= value):
        return best
    return Reading(value, source)


def smallest(*readings: Reading | None) -> Reading | None:
    """The smallest of the readings that have a value, or ``None``."""
    best: Reading | None = None
    for reading in readings:
        if reading is not None:
            best = smaller(best, reading.value, reading.source)
    return best
