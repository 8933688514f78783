"""What every worker process of a ``process`` or ``loky`` pool does first (standard library
only: it runs in the worker before anything else is imported).

- It ignores SIGINT (a forked worker has it blocked by the caller from its start, then
  ignored, then unblocked, so that none lands in between). A Ctrl-C at a terminal goes to the
  whole process group; the caller stops the run and kills its workers, and a worker that took
  the signal itself would only print a traceback or, worse, report the interrupt as its task's
  outcome.
- It offers itself to the OOM killer first (``oom_score_adj`` 1000, which any process may
  raise): when a memory limit is hit, the kernel kills a worker, whose tasks can run again,
  never the caller, whose results would be lost.
- It dies with its parent. A worker watches the process that started it (the caller, or the
  forkserver that dies with the caller) and kills itself once that process is gone, however it
  went (SIGKILL included): otherwise it would run on, orphaned, holding the caller's output
  open and a budget slot that was already given back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

__all__ = ["PARENT_POLL", "prepare"]

# How often a worker looks for its parent: the longest an orphan outlives its caller.
PARENT_POLL = 0.2


def prepare() -> None:
    """The pool's initializer: runs once in each worker, before its first task."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the caller while we started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:  # Linux
        adj.write("1000")
    parent = os.getppid()
    watch = threading.Thread(target=_die_with, args=(parent,), name="stepdown-parent", daemon=True)
    # No thread to spare (a full pids group): the worker works unwatched rather than not at all.
    with contextlib.suppress(RuntimeError):
        watch.start()


def _die_with(parent: int) -> None:
    # Re-parented (to init or a subreaper) means the parent has exited: polling the parent's
    # pid is free of the pid-reuse race that probing the old pid would have.
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os.kill(os.getpid(), signal.SIGKILL)
