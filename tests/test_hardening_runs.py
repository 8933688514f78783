"""Runs that used to break the caller's run, reproduced the way they happened: a result the
caller cannot rebuild, a real MemoryError receiving a result, a fork while another thread
imports, a nested run inside a pool worker at exit, a task's ``os._exit(0)``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import stepdown
from stepdown.backends.forking import imports_settled

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def _script(
    tmp_path: Path, body: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'src'}"}
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )


# ---- a result the caller cannot rebuild ----------------------------------------------------


def _refuse() -> object:
    raise ValueError("this result cannot be rebuilt here")


class Unrebuildable:
    """Pickles in the worker; rebuilding it in the caller raises."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse, ())


def unrebuildable_on_3(x: int) -> object:
    return Unrebuildable() if x == 3 else x


def unpicklable_on_3(x: int) -> object:
    return (y for y in ()) if x == 3 else x  # a generator cannot be pickled at all


@pytest.mark.parametrize("ladder", [["process:2"], ["loky:2"]])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_a_result_the_caller_cannot_rebuild_fails_its_task_only(
    ladder: list[str], batch_size: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "stepdown")
    run = stepdown.run(
        unrebuildable_on_3, range(8), ladder=ladder, errors="return", batch_size=batch_size
    )
    assert [r for i, r in enumerate(run.results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    error = run.results[3]
    assert isinstance(error, ValueError) and "cannot be rebuilt" in str(error)
    notes = getattr(error, "__notes__", [])
    if sys.version_info >= (3, 11):
        assert any("result of task 3 could not be rebuilt" in n for n in notes)
    assert [r.label for r in run.report.rungs] == [ladder[0].replace(":", "(") + ")"]
    assert run.report.rungs[0].failure is None
    assert "failed" not in caplog.text


@pytest.mark.parametrize("ladder", [["process:2"], ["loky:2"]])
def test_a_result_that_cannot_be_pickled_fails_its_task_only(ladder: list[str]) -> None:
    run = stepdown.run(unpicklable_on_3, range(8), ladder=ladder, errors="return", batch_size=4)
    assert [r for i, r in enumerate(run.results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert isinstance(run.results[3], Exception)
    assert "generator" in str(run.results[3])
    assert run.report.rungs[0].failure is None


def test_a_memory_error_receiving_a_result_steps_down_and_loses_nothing(tmp_path: Path) -> None:
    """A real MemoryError in the caller (RLIMIT_DATA) while a 400 MB result comes back: a
    memory failure that steps down, named as such, never the whole run."""
    done = _script(
        tmp_path,
        """
        import logging, resource, sys
        import stepdown
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        SIZE = 400 * 2**20

        def big(x):
            return b"x" * SIZE if x == 2 else x

        def vmdata():
            for line in open("/proc/self/status"):
                if line.startswith("VmData"):
                    return int(line.split()[1]) * 1024

        stepdown.map(abs, range(4), ladder=["process:2"])  # workers start before the limit
        limit = vmdata() + 700 * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        run = stepdown.run(big, range(6), ladder=["process:2", "sequential"], errors="return")
        print([len(v) if isinstance(v, bytes) else v for v in run.results])
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 419430400, 3, 4, 5]"
    assert "MemoryError while the caller received a result" in done.stderr
    assert "SIGTERM" not in done.stderr


# ---- forking while another thread imports ----------------------------------------------------


def test_a_fork_waits_for_another_threads_import(tmp_path: Path) -> None:
    """A worker forked while another thread held a module's import lock used to wait forever
    for it at its first use of that module."""
    (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(1.5)\nVALUE = 7\n")
    done = _script(
        tmp_path,
        """
        import threading, time
        import stepdown

        def task(x):
            import slowmod
            return x + slowmod.VALUE

        other = threading.Thread(target=lambda: __import__("slowmod"))
        other.start()
        time.sleep(0.3)  # the other thread is inside the import now
        print(stepdown.map(task, range(4), ladder=["process:2"]), flush=True)
        other.join()
        """,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[7, 8, 9, 10]"


def test_the_callers_own_import_does_not_hold_a_fork() -> None:
    assert imports_settled(wait=0.0) is True


# ---- nested runs ---------------------------------------------------------------------------

NESTED = """
import sys
import stepdown

def inner(x):
    return x + 1

def outer(x):
    return sum(stepdown.map(inner, range(3), ladder=[sys.argv[2]]))

if __name__ == "__main__":
    print(stepdown.map(outer, range(4), ladder=[sys.argv[1]]), flush=True)
"""


@pytest.mark.parametrize("outer", ["process:2", "loky:2", "thread:2"])
@pytest.mark.parametrize("inner", ["process:2", "loky:2"])
def test_a_nested_run_in_a_worker_exits_cleanly(tmp_path: Path, outer: str, inner: str) -> None:
    """The worker's exit shuts its warm nested pool down (it used to wait for it forever)."""
    done = _script(tmp_path, NESTED, outer, inner, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[6, 6, 6, 6]"
    assert "Traceback" not in done.stderr + done.stdout
    assert "leaked" not in done.stderr


# ---- what a dead worker is said to have died of ------------------------------------------


def exits_on_3(x: int) -> int:
    if x == 3:
        os._exit(0)
    return x


@pytest.mark.parametrize("ladder", [["process:2", "sequential"], ["loky:2", "sequential"]])
def test_a_task_that_exits_0_is_named_not_blamed_on_sigterm(
    ladder: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "stepdown")
    run = stepdown.run(exits_on_3, range(10), ladder=ladder, errors="return", batch_size=1)
    assert isinstance(run.results[3], stepdown.errors.TaskCrashed)
    assert [r for i, r in enumerate(run.results) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert "exited with code 0" in caplog.text
    assert "SIGTERM" not in caplog.text


def test_a_worker_killed_while_the_pool_starts_gets_one_fresh_pool(tmp_path: Path) -> None:
    """SIGKILL of a loky worker before the pool's first answer: the rung starts a fresh pool,
    as after a death during the run, instead of stepping down at once."""
    done = _script(
        tmp_path,
        """
        import logging, os, threading, time
        import psutil
        import stepdown
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        me = psutil.Process()
        killed = []

        def killer():
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not killed:
                for child in me.children(recursive=True):
                    try:
                        if "LokyProcess" in " ".join(child.cmdline()):
                            os.kill(child.pid, 9)
                            killed.append(child.pid)
                            break
                    except psutil.Error:
                        pass
                time.sleep(0.001)

        threading.Thread(target=killer, daemon=True).start()
        run = stepdown.run(abs, range(8), ladder=["loky:2", "sequential"], reuse=False)
        print(len(killed), run.results == list(range(8)), run.report.final_rung)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True", "loky(2)"]
    assert "a worker died while the pool started; starting a fresh pool" in done.stderr
    assert "could not start" not in done.stderr
