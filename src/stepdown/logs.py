"""Who speaks: stepdown's warnings name stepdown, also where nobody set up logging.

Where no logging handler is set up, Python prints a library's WARNING records through its
last-resort handler: the bare message, with no sign of where it came from.
:func:`install_handler` gives the ``"stepdown"`` logger one handler that, in exactly that case
(no handler on the record's way up to the root logger, the root's own included), prints the
record as one line, ``stepdown: <message>``, on stderr, above a progress bar if one is shown.
Once the caller has set up logging (``basicConfig``, ``dictConfig``, a handler of their own) it
prints nothing: their handlers print the record, in their format, once. It never configures
logging itself.

The same handler tells the progress bar of a run what the runner says (:func:`watch`), so the
bar shows a step-down the moment it is logged, and prints its lines through the bar.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Protocol

__all__ = ["Watcher", "install_handler", "unwatch", "watch"]

NAME = "stepdown"


class Watcher(Protocol):
    """What :func:`watch` takes: told of each record; writes a line without breaking itself."""

    def seen(self, record: logging.LogRecord) -> None: ...

    def write(self, line: str) -> None: ...


class _Speaker(logging.Handler):
    """Prints ``stepdown: <message>`` where no other handler would show the record."""

    def __init__(self) -> None:
        super().__init__()
        self.watchers: list[Watcher] = []
        self.setFormatter(logging.Formatter(f"{NAME}: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        watchers = list(self.watchers)
        for watcher in watchers:
            watcher.seen(record)
        if record.levelno < logging.WARNING or self._heard_elsewhere(record):
            return
        try:
            line = self.format(record)
            if watchers:
                watchers[-1].write(line)
            else:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
        except Exception:
            self.handleError(record)

    def _heard_elsewhere(self, record: logging.LogRecord) -> bool:
        """Whether a handler other than this one is on the record's way up (as logging walks
        it: up through the parents while each propagates)."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


_lock = threading.Lock()
_speaker: _Speaker | None = None


def install_handler() -> None:
    """Give the ``"stepdown"`` logger its handler, once per process."""
    _installed()


def _installed() -> _Speaker:
    global _speaker
    with _lock:
        if _speaker is None:
            _speaker = _Speaker()
            logging.getLogger(NAME).addHandler(_speaker)
        return _speaker


def watch(watcher: Watcher) -> None:
    """Tell ``watcher`` of each record the ``"stepdown"`` logger emits, and print this
    handler's lines through it, until :func:`unwatch`."""
    _installed().watchers.append(watcher)


def unwatch(watcher: Watcher) -> None:
    """Stop telling ``watcher``."""
    watchers = _installed().watchers
    if watcher in watchers:
        watchers.remove(watcher)
