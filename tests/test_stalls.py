"""A rung whose workers are all alive but make no progress is a stall, not a hang.

Reproduced the way it happens: a worker stuck before its first task, on a lock another thread
of the caller held when it forked, or importing a module that never finishes importing in a
worker. Each run has its own timeout: before the watchdog looked at what workers do, both ran
forever.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, body: str, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in {**files, "job.py": body}.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'src'}"}
    return subprocess.run(
        [sys.executable, str(tmp_path / "job.py")],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=tmp_path,
    )


# The caller holds LOCK in another thread when its pool forks: a forked worker inherits it held,
# and unpickling the first item it is sent waits for it forever.
_REGISTRY = """
    import threading

    LOCK = threading.Lock()

    class Item:
        def __init__(self, n):
            self.n = n

        def __setstate__(self, state):
            with LOCK:
                self.__dict__.update(state)

    def double(item):
        return 2 * item.n
"""


def test_a_forked_worker_stuck_on_an_inherited_lock_is_a_stall(tmp_path: Path) -> None:
    body = """
        import logging, threading, time
        import stepdown
        from registry import LOCK, Item, double

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        threading.Thread(target=lambda: (LOCK.acquire(), time.sleep(3600)), daemon=True).start()
        time.sleep(0.2)
        items = [Item(n) for n in range(6)]
        print(stepdown.map(double, items, ladder=["process:2", "thread:2"], stall_timeout=0.3))
    """
    done = _run(tmp_path, body, {"registry.py": _REGISTRY})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 2, 4, 6, 8, 10]"
    assert "live workers has started or finished a task" in done.stderr
    assert "stepping down to thread(2)" in done.stderr


# A module that never finishes importing anywhere but in the caller (the caller's pid is in
# the environment its workers inherit).
_SLOW_IMPORT = """
    import os, time

    if os.environ.get("CALLER_PID") != str(os.getpid()):
        time.sleep(3600)

    def square(x):
        return x * x
"""


def test_a_fresh_worker_stuck_importing_the_tasks_module_is_a_stall(tmp_path: Path) -> None:
    body = """
        import logging, os
        os.environ["CALLER_PID"] = str(os.getpid())
        import stepdown
        from stuck import square

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        print(stepdown.map(square, range(6), ladder=["loky:2", "thread:2"], stall_timeout=0.3))
    """
    done = _run(tmp_path, body, {"stuck.py": _SLOW_IMPORT})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 4, 9, 16, 25]"
    assert "live workers has started or finished a task" in done.stderr


def test_a_long_task_is_not_a_stall(tmp_path: Path) -> None:
    """A worker in a task is working, however long the task takes (``task_timeout`` is for
    that): ten times ``stall_timeout`` passes and the rung stays."""
    body = """
        import logging, time
        import stepdown

        def slow(x):
            time.sleep(4)
            return x

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        print(stepdown.map(slow, range(2), ladder=["process:2", "thread:2"], stall_timeout=0.3))
    """
    done = _run(tmp_path, body, {})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1]"
    assert "failed" not in done.stderr and "stalled" not in done.stderr, done.stderr
