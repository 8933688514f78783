"""Logging that says who speaks: a step-down warning is one line naming stepdown where nobody set
up logging, and the caller's own format, once, where they did."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# A process rung whose worker task 3 kills (once: a marker file): one step-down to threads.
# SETUP is what the caller does about logging before (or between) the runs.
SCRIPT = """\
import logging, os, sys, stepdown

MARK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "killed")

def killer(x):
    if x == 3:
        try:
            os.close(os.open(MARK, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return x
        os.kill(os.getpid(), 9)
    return x

def step_down():
    if os.path.exists(MARK):
        os.remove(MARK)
    ladder = [{"backend": "process", "workers": 2, "restarts": 0}, "thread:2"]
    assert stepdown.map(killer, range(8), ladder=ladder) == list(range(8))

if __name__ == "__main__":
    {setup}
"""


def run(tmp_path: Path, setup: str) -> list[str]:
    """The lines the script writes on stderr."""
    path = tmp_path / "job.py"
    path.write_text(SCRIPT.replace("{setup}", setup.replace("\n", "\n    ")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPDOWN_")}
    out = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr.splitlines()


@pytest.mark.timeout(60)
def test_without_logging_set_up_a_step_down_is_one_line_naming_stepdown(tmp_path: Path) -> None:
    [line] = run(tmp_path, "step_down()")
    assert line.startswith("stepdown: process(2) failed: a worker process died")
    assert "stepping down to thread(2)" in line


@pytest.mark.timeout(60)
def test_the_callers_logging_prints_it_in_their_format_once(tmp_path: Path) -> None:
    setup = 'logging.basicConfig(format="%(levelname)s [%(name)s] %(message)s")\nstep_down()'
    [line] = run(tmp_path, setup)
    assert line.startswith("WARNING [stepdown] process(2) failed: a worker process died")


@pytest.mark.timeout(60)
def test_logging_set_up_after_a_first_run_takes_over(tmp_path: Path) -> None:
    setup = 'step_down()\nlogging.basicConfig(format="mine: %(message)s")\nstep_down()'
    first, second = run(tmp_path, setup)
    assert first.startswith("stepdown: process(2) failed")
    assert second.startswith("mine: process(2) failed")


@pytest.mark.timeout(60)
def test_a_handler_of_the_callers_on_the_stepdown_logger_is_the_only_one(tmp_path: Path) -> None:
    setup = (
        "handler = logging.StreamHandler(sys.stderr)\n"
        'handler.setFormatter(logging.Formatter("job: %(message)s"))\n'
        'logging.getLogger("stepdown").addHandler(handler)\n'
        "step_down()"
    )
    [line] = run(tmp_path, setup)
    assert line.startswith("job: process(2) failed")


@pytest.mark.timeout(60)
def test_silenced_by_the_caller_stays_silent(tmp_path: Path) -> None:
    setup = 'logging.getLogger("stepdown").setLevel(logging.ERROR)\nstep_down()'
    assert run(tmp_path, setup) == []
