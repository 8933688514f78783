"""The progress bar, seen as a person sees it: a real terminal (a pty) on stderr.

Shown by default in a terminal once a run has lasted a second, named after the rung, changed by a
step-down as it happens; absent when stderr is a pipe or ``CI`` is set; on ``run``, ``imap`` and
``Executor``.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

# A run on a process rung whose worker is killed by task 10 (once: a marker file), so the run
# steps down to threads; or a plain run of slow tasks on threads.
SCRIPT = """\
import os, sys, time, stepdown

MARK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "killed")

def killer(x):
    time.sleep(0.02)
    if x == 10:
        try:
            os.close(os.open(MARK, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return x
        os.kill(os.getpid(), 9)
    return x

def slow(x):
    time.sleep(0.1)
    return x

if __name__ == "__main__":
    how = sys.argv[1]
    progress = {"auto": None, "on": True, "off": False}[sys.argv[2]]
    if how == "step-down":
        ladder = [{"backend": "process", "workers": 2, "restarts": 0}, "thread:2"]
        got = stepdown.run(killer, range(40), ladder=ladder, progress=progress).results
        assert got == list(range(40)), got
    elif how == "slow":
        got = stepdown.map(slow, range(24), ladder=["thread:2"], progress=progress)
        assert got == list(range(24)), got
    elif how == "imap":
        got = list(stepdown.imap(slow, range(6), ladder=["thread:2"], progress=progress))
        assert got == list(range(6)), got
    elif how == "executor":
        with stepdown.Executor(ladder=["thread:2"], progress=progress) as ex:
            got = list(ex.map(slow, range(6)))
        assert got == list(range(6)), got
    print("finished", flush=True)
"""


def environment(**extra: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STEPDOWN_") and k not in ("CI", "TERM", "COLUMNS")
    }
    return {**base, "TERM": "xterm", **extra}


def script(tmp_path: Path) -> str:
    path = tmp_path / "job.py"
    path.write_text(SCRIPT)
    return str(path)


def in_terminal(tmp_path: Path, *args: str, **env: str) -> str:
    """What a terminal of 120 columns shows of ``python job.py ARGS``: stdout and stderr."""
    master, slave = pty.openpty()
    # A pty starts 0 columns wide; a real terminal never is.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, script(tmp_path), *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=environment(**env),
        cwd=tmp_path,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal (Linux: EIO)
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        process.kill()
        process.wait(timeout=10)
    text = seen.decode(errors="replace")
    assert "finished" in text, text[-3000:]
    return text


NAMED = re.compile(r"(.+?): +\d+%\|")


def bars(text: str) -> list[str]:
    """Each drawing of a bar, in order."""
    return [part.strip() for part in text.replace("\n", "\r").split("\r") if "task/s" in part]


@pytest.mark.timeout(90)
def test_the_bar_names_the_rung_and_shows_a_step_down_as_it_happens(tmp_path: Path) -> None:
    drawn = bars(in_terminal(tmp_path, "step-down", "on"))
    # Drawn at once (progress=True), first without a name: no rung has started yet.
    descriptions = [m.group(1) for m in map(NAMED.match, drawn) if m]
    assert descriptions[0] == "process(2)"
    # The moment the rung fails, before the next one has delivered anything.
    assert "process(2) → …" in descriptions
    assert descriptions[-1].startswith("process(2) → ")
    assert descriptions[-1].endswith("thread(2)")
    assert "40/40" in drawn[-1]


@pytest.mark.timeout(90)
def test_a_long_run_in_a_terminal_gets_a_bar_by_default_after_a_second(tmp_path: Path) -> None:
    drawn = bars(in_terminal(tmp_path, "slow", "auto"))
    assert drawn, "no bar"
    assert drawn[-1].startswith("thread(2): 100%")
    assert "24/24" in drawn[-1]
    # Not drawn before the run had lasted a second (the elapsed time it shows).
    assert not any("[00:00<" in d for d in drawn), drawn


@pytest.mark.timeout(90)
def test_no_bar_in_ci_or_when_asked_for_none(tmp_path: Path) -> None:
    assert bars(in_terminal(tmp_path, "slow", "auto", CI="true")) == []
    assert bars(in_terminal(tmp_path, "slow", "off")) == []


@pytest.mark.timeout(90)
def test_no_bar_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, script(tmp_path), "slow", "auto"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "finished" in out.stdout
    assert out.stderr == ""


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("how", "unit"), [("imap", "task"), ("executor", "call")])
def test_imap_and_the_executor_have_a_bar(tmp_path: Path, how: str, unit: str) -> None:
    drawn = bars(in_terminal(tmp_path, how, "on").replace(f"{unit}/s", "task/s"))
    assert drawn, "no bar"
    assert drawn[-1].startswith("thread(2): ")
    assert "6/6" in drawn[-1]
