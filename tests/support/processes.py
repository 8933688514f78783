"""Whether a process is still there, for tests that check a worker was really stopped."""

from __future__ import annotations

import os
import time


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[-1].split()[0]
    except (ProcessLookupError, FileNotFoundError):  # reaped in between, too
        return False
    return state != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    """Whether ``pid`` is gone within ``seconds`` (a killed process takes a moment)."""
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
