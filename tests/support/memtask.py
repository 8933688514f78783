"""A task that holds memory the way scoring code does: built up in steps, held while it
computes, then freed; it returns a checksum of what it held."""

from __future__ import annotations

import time

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
