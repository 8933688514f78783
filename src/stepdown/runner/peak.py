"""How much memory a batch of tasks took, measured where it ran (standard library only: this
runs inside worker processes).

Linux keeps a process's peak resident size (``VmHWM``) and lets the process reset it to the
current size (``5`` into ``/proc/self/clear_refs``, which touches no page): a batch's peak over
the size it started at is what its tasks held at most, whatever they allocated and freed. Three
small reads and writes a batch (~0.1 ms; batches last ~50 ms). Elsewhere nothing is measured.

While its tasks run, a batch may also be capped (:func:`cap`): the runner gives each worker of
a process rung a share of the memory left, and a task that outgrows it gets a ``MemoryError``
(which shrinks the rung) long before the kernel would kill anyone.
"""

from __future__ import annotations

import os

__all__ = ["cap", "since", "start"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_works: bool | None = None  # per process: whether this kernel lets us reset the peak


def start() -> int | None:
    """Reset this process's peak and return its resident size now (``None``: cannot measure)."""
    global _works
    if _works is False:
        return None
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        with open("/proc/self/statm", "rb") as statm:
            resident = int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        _works = False
        return None
    _works = True
    return resident


def since(base: int | None) -> int | None:
    """The peak resident size since :func:`start` returned ``base``, over ``base``."""
    if base is None:
        return None
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return max(0, int(line.split()[1]) * 1024 - base)
    except (OSError, ValueError, IndexError):
        pass
    return None


# The soft RLIMIT_DATA this process had before any cap of ours, put back after each batch.
_uncapped: int | None = None


def cap(share: int | None) -> None:
    """Let the tasks of a batch add at most ``share`` bytes of data to what this process holds
    now (``RLIMIT_DATA``): beyond it, an allocation raises ``MemoryError`` in the task instead
    of the kernel's OOM killer choosing a process. ``None`` puts the process's own limit back
    (after the tasks: the pool's own unpickling and pickling are never capped)."""
    global _uncapped
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if _uncapped is None:
            _uncapped = soft
        if share is None:
            target = _uncapped
        else:
            with open("/proc/self/statm", "rb") as statm:
                data = int(statm.read().split()[5]) * _PAGE
            target = data + share
            if hard != resource.RLIM_INFINITY:
                target = min(target, hard)
        if target != soft:
            resource.setrlimit(resource.RLIMIT_DATA, (target, hard))
    except (ImportError, OSError, ValueError, IndexError):  # not Linux: no cap
        pass
