"""Memory that is learned and defended: what a task holds is measured where it runs, a memory
failure shrinks the process rung before anything moves into the caller, and the OOM killer is
never left to choose the caller.

The cgroup tests run a child Python inside a memory group made by the test (root and cgroups;
they skip elsewhere with the reason), its tasks built up in steps the way scoring code holds
memory (``tests/support/memtask.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import stepdown
from stepdown.planning.cgroup import Cgroup as GroupFiles
from stepdown.planning.cgroup import cgroup_memory
from stepdown.runner.batch import run_batch
from stepdown.runner.memory import TaskMemory

from tests.support.cgroups import Cgroup, child_env, skip_unless_cgroups

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
linux_only = pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs"
)


def _allocate(mib: int) -> int:
    data = bytearray(mib * MiB)
    data[::4096] = b"\x01" * (len(data) // 4096)
    return sum(data[::4096])


@linux_only
def test_a_batch_reports_the_most_its_tasks_held() -> None:
    result = run_batch(_allocate, [40, 120, 20], remote=True)
    assert result.errors is None
    assert result.peak is not None
    # The largest task (120 MiB), not their sum: each frees its memory before the next.
    assert 110 * MiB <= result.peak <= 160 * MiB, result.peak / MiB


def test_task_memory_learns_the_largest_peak_and_a_declared_one_wins() -> None:
    learned = TaskMemory(None)
    assert learned.estimate is None and learned.describe() is None
    for peak in (30 * MiB, None, 90 * MiB, 60 * MiB):
        learned.observe(peak)
    assert learned.estimate == 90 * MiB
    assert learned.describe() == "learned 90.0 MiB (largest of 3 batches)"
    declared = TaskMemory(200 * MiB)
    declared.observe(300 * MiB)
    assert declared.estimate == 200 * MiB
    assert declared.describe() == "declared 200.0 MiB"


@linux_only
@pytest.mark.parametrize("rung", ["process:2", "loky:2"])
def test_workers_are_the_oom_killers_first_choice_not_the_caller(rung: str) -> None:
    def adjustment(_: object) -> str:
        with open("/proc/self/oom_score_adj") as adj:
            return adj.read().strip()

    with open("/proc/self/oom_score_adj") as adj:
        own = adj.read().strip()
    assert stepdown.map(adjustment, range(4), ladder=[rung]) == ["1000"] * 4
    with open("/proc/self/oom_score_adj") as adj:
        assert adj.read().strip() == own


@linux_only
def test_the_report_shows_the_learned_task_memory() -> None:
    run = stepdown.run(_allocate, [30, 60, 30, 60], ladder=["process:2"], batch_size=1)
    learned = run.report.task_memory
    assert learned is not None and learned.startswith("learned "), learned
    assert run.report.to_dict()["task_memory"] == learned
    # The text says it only where it decided something (after a memory failure, below).
    assert "learned" not in str(run.report)


# One instance whose tasks outgrow its container: 6 tasks of 200 MiB on loky:2 in a 420 MiB
# group. Two at once do not fit beside the caller; one does. Before: the kernel killed a worker,
# then the fresh pool's, then thread(2) ran two tasks inside the caller and it was killed with
# every result.
OUTGROW = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
import stepdown
from tests.support.memtask import hold

run = stepdown.run(hold, [(200, i) for i in range(6)], ladder=["loky:2", "thread:2", "sequential"])
rungs = [r.label for r in run.report.rungs]
print(json.dumps({"results": run.results, "rungs": rungs, "report": str(run.report)}))
"""


def test_tasks_that_outgrow_the_container_shrink_the_process_rung() -> None:
    skip_unless_cgroups("memory")
    with Cgroup("memory") as group:
        group.set_memory_limit(420 * MiB)
        done = group.run_python(textwrap.dedent(OUTGROW), timeout=100)
        kills = group.oom_kills()
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["results"] == list(range(6))
    assert kills == 0, done.stderr[-3000:]
    # Shrunk, never moved into the caller.
    assert out["rungs"][0] == "loky(2)" and out["rungs"][-1] == "loky(1)", out["rungs"]
    assert "shrinking it to loky(1)" in done.stderr
    learned = re.search(r"task memory learned ([\d.]+) MiB", out["report"])
    assert learned is not None and 150 <= float(learned.group(1)) <= 300, out["report"]


# Tasks of 160 MiB, one at a time, in a 400 MiB group. When task 2 starts, another process in
# the group (the hog) takes 200 MiB and keeps it: the guard stops the worker. The task does not
# move into the caller, whom the OOM killer would then pick: the one-worker rung waits for room
# and runs again; the hog is killed once the run says it waits. Before, the task moved to the
# sequential rung at once, which ran it inside the caller (and before that, was skipped and the
# run raised "every rung of the ladder failed" with two results in hand).
CONTENDED = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
import stepdown
from tests.support.memtask import hold_then_signal

items = [(160, i, sys.argv[1], 2) for i in range(4)]
ladder = ["process:1", "sequential"]
run = stepdown.run(hold_then_signal, items, ladder=ladder, stall_timeout=float(sys.argv[2]))
print(json.dumps({"results": run.results, "rungs": [r.label for r in run.report.rungs]}))
"""


def _beside_hog(
    hog: str, script: str, args: list[str], free_on: str | None = None
) -> tuple[int, str, str, int]:
    """Run ``script`` with ``args`` in a 400 MiB group beside the process ``hog`` (Python code),
    which is killed once a line of the run's stderr holds ``free_on``. Returns the run's exit
    code, stdout, stderr and the group's OOM kills."""
    skip_unless_cgroups("memory")
    with Cgroup("memory") as group:
        group.set_memory_limit(400 * MiB)
        env = child_env()
        hogging = group.popen([sys.executable, "-c", hog], stdout=subprocess.PIPE, env=env)
        try:
            run = group.popen(
                [sys.executable, "-c", textwrap.dedent(script), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            assert run.stderr is not None
            lines = []
            for line in run.stderr:  # ends when the run exits
                lines.append(line)
                if free_on is not None and free_on in line:
                    hogging.kill()
            out, _ = run.communicate(timeout=90)
        finally:
            hogging.kill()
            hogging.wait(timeout=10)
        return run.returncode, out, "".join(lines), group.oom_kills()


def _contended(tmp_path: Path, free: bool) -> tuple[int, str, str, int]:
    """Run CONTENDED beside a hog; ``free``: kill the hog once the run waits."""
    marker = str(tmp_path / "go")
    hog = f"from tests.support.memtask import hog; hog({marker!r}, 200)"
    args = [marker, "3" if free else "0.3"]
    return _beside_hog(hog, CONTENDED, args, "waiting up to" if free else None)


def test_a_one_worker_rung_waits_for_memory_others_hold_then_runs_again(tmp_path: Path) -> None:
    code, out, stderr, kills = _contended(tmp_path, free=True)
    assert code == 0, stderr[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {
        "results": [0, 1, 2, 3],
        "rungs": ["process(1)", "process(1)"],
    }
    assert "process(1) failed: out of memory" in stderr, stderr[-3000:]
    assert "running it again once a task fits" in stderr, stderr[-3000:]
    assert "memory came back after" in stderr, stderr[-3000:]
    assert kills == 0, stderr[-3000:]


def test_memory_that_never_comes_back_ends_the_run_as_out_of_memory(tmp_path: Path) -> None:
    """Waiting is bounded (10 x stall_timeout); the run then says memory, not a broken
    executor."""
    code, _, stderr, kills = _contended(tmp_path, free=False)
    assert code == 1, stderr[-3000:]
    assert "waiting up to 3 s" in stderr, stderr[-3000:]
    assert "after waiting 3 s; stepping down to sequential" in stderr, stderr[-3000:]
    assert "is left: it would take the caller down" in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last == "stepdown.errors.ResourceFailure: out of memory: every rung of the ladder failed"
    assert kills == 0, stderr[-3000:]


# Tasks of 160 MiB in a 400 MiB group, beside a hog that takes 200 MiB for 1 s each time task 2
# starts: each run of the one worker is stopped, and memory comes back between runs.
PULSED = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
import stepdown
from tests.support.memtask import hold_then_signal

items = [(160, i, sys.argv[1], 2) for i in range(4)]
try:
    stepdown.run(hold_then_signal, items, ladder=["process:1", "sequential"], stall_timeout=1)
except stepdown.ResourceFailure as exc:
    print(json.dumps({"error": str(exc)}))
"""


def test_a_task_that_never_fits_in_one_worker_is_not_moved_into_the_caller(
    tmp_path: Path,
) -> None:
    """Three one-worker runs in a row end no task: the ladder moves on, and the sequential rung
    refuses the task rather than run it inside the caller, whom the OOM killer would pick."""
    marker = str(tmp_path / "go")
    hog = f"from tests.support.memtask import pulsing_hog; pulsing_hog({marker!r}, 200, 1.0)"
    code, out, err, _ = _beside_hog(hog, PULSED, [marker])
    assert code == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {
        "error": "out of memory: every rung of the ladder failed"
    }, err[-3000:]
    assert err.count("running it again once a task fits") == 3, err[-3000:]
    assert "in hand\nWARNING sequential skipped: 3 runs with one worker in a row ran out of " in err
    assert "memory: it would take the caller down; stepping down to nothing" in err, err[-3000:]


def test_a_fresh_interpreter_worker_is_charged_its_own_footprint_not_the_callers() -> None:
    """A 1 GiB caller: a forked worker comes to copy its pages and is charged its RSS; a loky
    worker starts empty and is charged what loky workers hold (before: the caller's RSS, so a
    1 GiB notebook with 2 GiB free got loky(1))."""
    held = bytearray(1 << 30)
    held[::4096] = b"\x01" * (len(held) // 4096)
    time.sleep(1.1)  # past the probe's snapshot of this process (up to 1 s old), RSS and all
    plan = stepdown.plan(profile="kaggle", ladder=["loky:2"], tasks=100)
    loky = plan.usable_rungs()[0]
    fork = {"backend": "process", "workers": 2, "start_method": "fork"}
    forked = stepdown.plan(ladder=[fork], tasks=100).usable_rungs()[0]
    assert plan.worker_memory(loky) < 256 * MiB, plan.worker_memory(loky) / MiB
    assert plan.worker_memory(forked) >= 1 << 30
    # Measured once a loky worker has run a batch: what it really held, not a guess.
    stepdown.map(abs, range(8), ladder=["loky:2"])
    measured = plan.worker_memory(loky)
    assert 5 * MiB < measured < 200 * MiB, measured / MiB
    del held


def test_all_file_cache_counts_as_free_for_the_guard_not_for_the_plan(tmp_path: Path) -> None:
    """A group at 900 of 1000 MiB, 300 MiB of it file cache (a notebook that read big files):
    the kernel takes the cache back before it kills anyone, so shares and the guard count all
    of it as free; the plan keeps counting only the inactive part."""
    (tmp_path / "memory.max").write_text(f"{1000 * MiB}\n")
    (tmp_path / "memory.current").write_text(f"{900 * MiB}\n")
    (tmp_path / "memory.stat").write_text(
        f"anon {600 * MiB}\nactive_file {200 * MiB}\ninactive_file {100 * MiB}\n"
    )
    group = GroupFiles(version=2, mount_point=str(tmp_path), path="/")
    _, planned = cgroup_memory(group)
    _, guarded = cgroup_memory(group, all_cache=True)
    assert planned is not None and planned.value == 200 * MiB
    assert guarded is not None and guarded.value == 400 * MiB


@linux_only
def test_the_guard_learns_what_the_worker_it_stopped_held() -> None:
    """CI: a one-worker rung was stopped by the guard before any batch had finished, nothing was
    learned, and the next rung ran two 200 MiB tasks inside the caller, which the kernel then
    killed. What the stopped worker held is now the least a task is taken to need."""
    from stepdown.runner.memory import Guard, Left, MemoryCare

    hog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "b = bytearray(120 << 20); b[::4096] = b'1' * (len(b) // 4096)\n"
            "print('held', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == "held"
        care = MemoryCare(None, patience=0.2)
        care.started = ("loky", True)  # a fresh interpreter: nothing of the caller's to take off
        care.guard = Guard(care.task, read=lambda: Left(10 * MiB, 1 << 30, "a full group"))
        care.guard.watch("loky(1)", lambda: [hog.pid], lambda pids: pids[0])
        assert hog.wait(timeout=10) == -9  # stopped: less than the margin was left
        care.guard.stop()
        failure = stepdown.errors.ResourceFailure(stepdown.Reason.WORKER_DIED, "killed")
        _, memory = care.judge(failure)
        assert memory
        assert care.task.estimate is not None and care.task.estimate >= 120 * MiB
        # Nothing fits beside the caller in a full group: no in-process rung runs two at once,
        # and with room it runs one: no task was measured to its end.
        assert care.in_process(2, lambda seconds: None) != 2
        care.guard.read = lambda: Left(1 << 30, 1 << 30, "an empty group")
        assert care.in_process(2, lambda seconds: None) == 1
    finally:
        hog.kill()
        hog.wait()
