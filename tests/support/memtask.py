"""A task that holds memory the way scoring code does: built up in steps, held while it
computes, then freed; it returns a checksum of what it held."""

from __future__ import annotations

import os
import time
from pathlib import Path

MiB = 1 << 20


def hold(item: tuple[int, int]) -> int:
    """Hold ``mib`` MiB (touched, 8 MiB at a time) for a moment; return ``index``."""
    mib, index = item
    chunks = []
    for _ in range(0, mib, 8):
        chunk = bytearray(8 * MiB)
        chunk[::4096] = b"\x01" * (len(chunk) // 4096)
        chunks.append(chunk)
        time.sleep(0.002)
    time.sleep(0.3)
    total = sum(c[0] for c in chunks)
    assert total == len(chunks)
    return index


def hold_then_signal(item: tuple[int, int, str, int]) -> int:
    """:func:`hold`, after creating the file ``marker`` if ``index`` is ``at``: what another
    process waits for to start taking memory while this task holds its own."""
    mib, index, marker, at = item
    if index == at:
        Path(marker).touch()
    return hold((mib, index))


def hog(marker: str, mib: int) -> None:
    """Once ``marker`` exists, hold ``mib`` MiB (touched) until killed; say so on stdout."""
    while not os.path.exists(marker):
        time.sleep(0.005)
    held = bytearray(mib * MiB)
    held[::4096] = b"\x01" * (len(held) // 4096)
    print("held", flush=True)
    time.sleep(3600)


def pulsing_hog(marker: str, mib: int, hold_for: float) -> None:
    """Each time ``marker`` appears, remove it and hold ``mib`` MiB (touched) for ``hold_for``
    seconds: another job that takes the memory whenever a task starts, then gives it back."""
    while True:
        while not os.path.exists(marker):
            time.sleep(0.005)
        os.unlink(marker)
        held = bytearray(mib * MiB)
        held[::4096] = b"\x01" * (len(held) // 4096)
        print("held", flush=True)
        time.sleep(hold_for)
        del held
