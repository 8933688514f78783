"""The progress bar of a run: tqdm on stderr, imported only when a bar is shown."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(total: int | None, progress: bool | None) -> Any:
    """A tqdm bar on stderr: ``True`` always, ``None`` only on a terminal, ``False`` never
    (then ``None`` is returned)."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True)
