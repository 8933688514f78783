"""The progress bar of a run: ``tqdm.auto`` (a widget in a notebook, text on a terminal), named
after the rung that runs, and imported only when a bar is shown.

``progress=None`` (the default) shows it where a person is watching: stderr is a terminal, or
the caller is a notebook's kernel; never where ``CI`` is set. It then appears only once the run
has lasted :data:`DELAY` seconds, so a quick run prints nothing. ``True`` shows it at once,
anywhere; ``False`` never.

Its description is the rung running now, after those that ran before it: ``process(2)``, then
``process(2) → …`` the moment the runner logs that the rung failed, then ``process(2) →
thread(2)`` once the next rung delivers. stepdown's own log lines print above the bar
(:mod:`stepdown.logs`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

from ..logs import unwatch, watch
from ..planning.resources import environment
from .report import Report

__all__ = ["DELAY", "Bar", "progress_bar", "rungs_text", "watched"]

# Seconds a run lasts before its bar appears (progress=None): long enough that a quick run
# prints nothing, short enough that a person waiting sees it is alive.
DELAY = 1.0


def watched() -> bool:
    """Whether a person is watching this process's stderr: a terminal, or a notebook's
    kernel, and ``CI`` unset."""
    if environment(os.environ).ci:
        return False
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False
    return _in_kernel()


def _in_kernel() -> bool:
    # Only a session that has imported IPython can be one; a terminal IPython has a tty.
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return getattr(shell, "kernel", None) is not None


def progress_bar(
    total: int | None, progress: bool | None, report: Report | None = None, *, unit: str = "task"
) -> Bar | None:
    """A bar on stderr for ``total`` items (``None``: unknown), following ``report``'s rungs if
    given: ``True`` always, ``None`` where a person is watching, ``False`` never (then ``None``
    is returned)."""
    if not (watched() if progress is None else progress):
        return None
    return Bar(total, report, delay=DELAY if progress is None else 0.0, unit=unit)


class Bar:
    """A shown bar: :meth:`update` it as results arrive, :meth:`close` it at the end."""

    def __init__(self, total: int | None, report: Report | None, delay: float, unit: str) -> None:
        from tqdm.auto import tqdm

        self._tqdm: Any = tqdm(
            total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, delay=delay
        )
        self._report = report
        self._shown_from = time.monotonic() + delay
        self._rungs = ""
        self._closed = False
        watch(self)

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self._follow()
        self._tqdm.update(n)

    def grow(self, n: int = 1) -> None:
        """``n`` more items to do (an executor learns its total as calls are submitted)."""
        self._tqdm.total = (self._tqdm.total or 0) + n

    def write(self, line: str, file: TextIO | None = None) -> None:
        """Print ``line`` above the bar (on stderr, or ``file``), as ``tqdm.write`` does."""
        stream = sys.stderr if file is None else file
        if self._drawn():
            self._tqdm.write(line, file=stream)
        else:  # tqdm.write would draw the bar again after the line, before its delay
            stream.write(line + "\n")
            stream.flush()

    def seen(self, record: logging.LogRecord) -> None:
        """The runner spoke: a warning is a rung that failed or was skipped."""
        if record.levelno >= logging.WARNING:
            self._follow()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            unwatch(self)
            self._tqdm.close()

    def _follow(self) -> None:
        if self._report is None:
            return
        rungs = rungs_text(self._report)
        if rungs != self._rungs:
            self._rungs = rungs
            # Not drawn before the delay: a description would show the bar early.
            self._tqdm.set_description(rungs, refresh=self._drawn())

    def _drawn(self) -> bool:
        return time.monotonic() >= self._shown_from


def rungs_text(report: Report) -> str:
    """``"process(2) → thread(2)"``: the rungs tried so far, ending ``→ …`` while the last
    one has just failed."""
    tried: list[str] = []
    for record in report.rungs:
        if (record.started or record.failure is not None) and tried[-1:] != [record.label]:
            tried.append(record.label)
    if report.rungs and report.rungs[-1].failure is not None:
        tried.append("…")
    return " → ".join(tried)
