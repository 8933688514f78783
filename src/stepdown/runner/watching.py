"""Where a worker is: for the runner to enforce ``task_timeout`` and to tell a stalled pool from
a busy one (standard library only: this runs inside worker processes).

In another process, a worker keeps a file ``<dir>/<pid>`` holding (batch tag, position, since)
as ``WATCH_RECORD``, rewritten in place: the position of the task running, ``IDLE`` between
batches, ``INITIALIZING`` in the run's initializer. In the caller's process, a batch is given a
callable ``note(tag, position)`` instead, which answers False once the batch was abandoned.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable

__all__ = ["IDLE", "INITIALIZING", "WATCH_RECORD", "Watch", "noter"]

WATCH_RECORD = struct.Struct("<qqd")
IDLE = -1
INITIALIZING = -2
Watch = str | Callable[[int, int], bool]

# The watch file open in this process: (directory, pid, fd), one at a time, so that a warm
# worker serving many runs does not keep a file of each open.
_open: tuple[str, int, int | None] = ("", 0, None)


def noter(watch: Watch | None) -> Callable[[int, int], bool] | None:
    """What a batch calls as it starts each task (``IDLE``: it ended); ``None``: no watch."""
    if watch is None or callable(watch):
        return watch
    fd = _file(watch)
    if fd is None:
        return None

    def note(tag: int, position: int) -> bool:
        os.pwrite(fd, WATCH_RECORD.pack(tag, position, time.monotonic()), 0)
        return True

    return note


def _file(directory: str) -> int | None:
    global _open
    pid = os.getpid()
    opened, owner, fd = _open
    if (opened, owner) == (directory, pid):
        return fd
    if fd is not None and owner == pid:
        os.close(fd)  # an earlier run's (a forked child's inherited one is its parent's)
    try:
        fd = os.open(os.path.join(directory, str(pid)), os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:  # not on this machine (a Ray node elsewhere): no timeout from here
        fd = None
    _open = (directory, pid, fd)
    return fd
