"""A dead worker's fresh pool is cheap: a loky rung comes back as a fork-started pool (~15 ms,
not loky's ~200 ms) when a fork of the caller is safe, as ``start_method = "auto"`` judges it;
beside another thread of the caller it is a loky pool again.

Each case is a fresh interpreter that SIGKILLs one of its loky workers mid-run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, os, signal, sys, threading, time
import stepdown

if sys.argv[1] == "threaded":
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()

def slow(x):
    time.sleep(0.02)
    return os.getpid(), x * x

killed = False
results = []
run = stepdown.imap(slow, range(40), ladder=["loky:2", "thread:2"])
for pid, value in run:
    results.append(value)
    if len(results) == 5 and not killed:
        os.kill(pid, signal.SIGKILL)
        killed = True
report = run.report
print(json.dumps({"results": results, "rungs": [r.label for r in report.rungs],
                  "restarted": [r.failure for r in report.rungs]}))
"""


def _run(tmp_path: Path, mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    found["log"] = out.stderr
    return found


@pytest.mark.timeout(120)
def test_a_loky_pool_comes_back_fork_started_when_a_fork_is_safe(tmp_path: Path) -> None:
    found = _run(tmp_path, "plain")
    assert found["results"] == [x * x for x in range(40)]
    assert found["rungs"] == ["loky(2)", "process(2)"], found["log"]
    assert "restarting it with a fresh pool, fork-started (process(2))" in str(found["log"])


@pytest.mark.timeout(120)
def test_beside_another_thread_it_is_a_loky_pool_again(tmp_path: Path) -> None:
    found = _run(tmp_path, "threaded")
    assert found["results"] == [x * x for x in range(40)]
    assert found["rungs"] == ["loky(2)", "loky(2)"]
    log = str(found["log"])
    # The thread the script started is named; a thread of the broken pool that is just ending
    # may be counted beside it.
    assert "restarting it with a fresh pool (not fork-started: the caller runs " in log, log
    assert "Thread-1 (sleep)" in log, log
