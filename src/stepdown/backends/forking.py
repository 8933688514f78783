"""Forking from a known state: no other thread is halfway through an import.

A forked child gets a copy of the caller's memory with only the forking thread in it. If another
thread held a module's import lock at that moment (it was importing the module), the child's
copy of the lock stays held by a thread that does not exist there, and the child's first use of
that module waits forever: a pool whose workers are alive and never answer. So a fork waits,
briefly, until no other thread owns an import lock. The caller's own thread may be importing
(a module that runs a job at import time): its locks are its own, and the fork goes ahead.
"""

from __future__ import annotations

import importlib._bootstrap as bootstrap
import logging
import threading
import time

__all__ = ["imports_settled"]

log = logging.getLogger("stepdown")

# Imports take milliseconds; one that takes longer (a module that blocks at import) is not
# worth waiting for: the fork goes ahead and the runner's watchdog has the last word.
_WAIT = 2.0


def _importing_elsewhere() -> list[str]:
    me = threading.get_ident()
    # Weak references to the locks of modules being imported now (CPython's importlib).
    locks = getattr(bootstrap, "_module_locks", {})
    busy = []
    for name, ref in list(locks.items()):
        lock = ref() if callable(ref) else None
        owner = getattr(lock, "owner", None)
        if owner is not None and owner != me:
            busy.append(name)
    return busy


def imports_settled(wait: float = _WAIT) -> bool:
    """Wait up to ``wait`` seconds until no other thread is importing; whether none is."""
    deadline = time.monotonic() + wait
    while True:
        busy = _importing_elsewhere()
        if not busy:
            return True
        if time.monotonic() >= deadline:
            log.debug("forking while another thread imports %s", ", ".join(sorted(busy)))
            return False
        time.sleep(0.002)
