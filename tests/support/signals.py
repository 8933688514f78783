"""Tasks and scripts for the interrupt tests: tasks that raise a ``BaseException``, and callers
run as scripts in a subprocess, to be interrupted or killed for real.

A script is started with :func:`start`, in a new session (its own process group, as a shell
job in a terminal has), so a signal to the group reaches the caller and its workers alike.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from tests.support.tasks import record

ROOT = Path(__file__).resolve().parents[2]


class Stop(BaseException):
    """A user's own ``BaseException`` subclass, importable: pickled by reference."""


def raise_(how: str) -> None:
    """Raise the ``BaseException`` named by ``how``."""
    if how == "cancelled":
        raise asyncio.CancelledError("cancelled by the task")
    if how == "stop":
        raise Stop("stop here")
    if how == "exit":
        sys.exit(4)
    if how == "interrupt":
        raise KeyboardInterrupt
    raise ValueError(how)


def ends(item: tuple[str, int, dict[int, str]]) -> int:
    """Record the call; raise what ``item[2]`` names for this index, else return the index."""
    directory, index, raising = item
    record(directory, index)
    if index in raising:
        time.sleep(0.2)  # the tasks before it finish first
        raise_(raising[index])
    return index


def touch_and_sleep(item: tuple[str, int, float]) -> int:
    """Record the call (the file names the worker's pid), then sleep ``item[2]`` seconds."""
    directory, index, seconds = item
    record(directory, index)
    time.sleep(seconds)
    return index


def start(script: str, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """Run ``script`` (Python source) as ``__main__`` in a new session, its stdin, stdout and
    stderr piped."""
    path = tmp_path / "caller.py"
    path.write_text(textwrap.dedent(script))
    path_var = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": path_var},
    )


def wait_for_files(directory: str | os.PathLike[str], count: int, seconds: float = 30) -> bool:
    """Whether ``directory`` holds ``count`` files within ``seconds``."""
    deadline = time.monotonic() + seconds
    while len(os.listdir(directory)) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, now."""
    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def nested(item: tuple[str, int]) -> int:
    """A task that runs its own stepdown run of two long tasks on a ``process:2`` rung."""
    import stepdown

    directory, index = item
    inner = [(directory, 10 * index + j, 60.0) for j in range(2)]
    return sum(stepdown.map(touch_and_sleep, inner, ladder=["process:2"]))
