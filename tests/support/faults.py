"""Memory faults on demand, made by the kernel: a fork refused for memory, a ``MemoryError``.

    fork_fails_with_enomem()   every os.fork() of this process -> OSError(ENOMEM)
    limit_data(headroom)       a large allocation in this process -> MemoryError

Monkeypatched exceptions would test our guesses about those conditions; these make the kernel
produce them, so a test sees the exact exception and side effects that production saw. (Thread
exhaustion and the OOM killer come from real cgroups: :mod:`tests.support.cgroups`.)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import re
import resource
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

_OVERCOMMIT = Path("/proc/sys/vm/overcommit_memory")


def _skip(reason: str) -> NoReturn:
    import pytest

    pytest.skip(reason)


_MAP_FAILED = ctypes.c_void_p(-1).value
_MREMAP_MAYMOVE = 1


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
    ]  # fmt: skip
    libc.mremap.restype = ctypes.c_void_p
    libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _proc_kib(path: str, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(path).read_text(), re.MULTILINE)
    return int(match[1]) * 1024 if match else 0


@contextlib.contextmanager
def fork_fails_with_enomem() -> Iterator[None]:
    """While inside, every ``os.fork()`` of this process fails with ``OSError(ENOMEM)``.

    Under the heuristic overcommit mode (``vm.overcommit_memory = 0``, read and never changed)
    each private writable mapping is checked at fork against RAM + swap. We map 0.75 x that
    (accepted: below the total) and grow it with mremap to 1.5 x (accepted: only the growth is
    checked); fork must then account the whole mapping and refuses. Nothing is touched, so no
    memory is used and other processes are not affected; spawn and posix_spawn still work.
    Skips with a reason if the mode differs or fork unexpectedly succeeds.
    """
    if not sys.platform.startswith("linux"):
        _skip(f"fork_fails_with_enomem needs Linux overcommit accounting, this is {sys.platform}")
    mode = _OVERCOMMIT.read_text().strip()
    if mode != "0":
        _skip(f"fork fails for memory only with vm.overcommit_memory = 0; this machine has {mode}")
    total = _proc_kib("/proc/meminfo", "MemTotal") + _proc_kib("/proc/meminfo", "SwapTotal")
    size = int(0.75 * total) // mmap.PAGESIZE * mmap.PAGESIZE
    libc = _libc()
    address = libc.mmap(
        None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0
    )
    if address in (None, _MAP_FAILED):
        _skip(f"mmap of {size / 2**30:.1f} GiB failed: {os.strerror(ctypes.get_errno())}")
    grown = libc.mremap(address, size, 2 * size, _MREMAP_MAYMOVE)
    if grown in (None, _MAP_FAILED):
        reason = os.strerror(ctypes.get_errno())
        libc.munmap(address, size)
        _skip(f"mremap to {2 * size / 2**30:.1f} GiB failed: {reason}")
    address, size = grown, 2 * size
    try:
        _expect_fork_to_fail(size)
        yield
    finally:
        libc.munmap(address, size)


def _expect_fork_to_fail(size: int) -> None:
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork in a threaded process; this child only exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            pid = os.fork()
        except OSError as exc:
            if exc.errno == errno.ENOMEM:
                return
            raise
        if pid == 0:
            os._exit(0)
    os.waitpid(pid, 0)
    _skip(
        f"os.fork() still succeeded while this process held a {size / 2**30:.1f} GiB mapping "
        "(overcommit heuristics differ on this kernel)"
    )


def limit_data(headroom_bytes: int) -> None:
    """Let this process allocate only ``headroom_bytes`` more: larger allocations raise a real
    ``MemoryError``. Meant as a worker initializer or the first line of a child.

    RLIMIT_DATA rather than RLIMIT_AS: the latter also counts thread stacks, so a small headroom
    would break thread creation too. Only the soft limit moves; the hard limit is kept.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = _proc_kib("/proc/self/status", "VmData") + headroom_bytes
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
