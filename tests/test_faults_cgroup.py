"""Faults the kernel produces for real: fork failing with ENOMEM, and threads that cannot start
because a pids cgroup is full. The cgroup tests run a child Python inside a group made by the
test; they need root and cgroups, and skip elsewhere with the reason."""

from __future__ import annotations

import json
import textwrap

import pytest

import stepdown
from stepdown.errors import Reason

from tests.support.cgroups import Cgroup, skip_unless_cgroups
from tests.support.faults import fork_fails_with_enomem
from tests.support.tasks import square

pytestmark = pytest.mark.timeout(120)

FORK = {"backend": "process", "workers": 2, "start_method": "fork"}


def test_pool_cannot_fork_enomem(warnings_log: pytest.LogCaptureFixture) -> None:
    with fork_fails_with_enomem():
        run = stepdown.run(square, range(30), ladder=[FORK, "thread:2"])
    assert run.results == [x * x for x in range(30)]
    first = run.report.rungs[0]
    assert first.label == "process(2)" and not first.started
    assert first.reason == Reason.OUT_OF_MEMORY.value
    assert run.report.final_rung == "thread(2)"
    assert run.report.rerun == 0
    assert any(
        "process(2) could not start: OSError: [Errno 12] Cannot allocate memory; "
        "stepping down to thread(2) with 0 of 30 results in hand" in r.message
        for r in warnings_log.records
    ), [r.message for r in warnings_log.records]


# The child: imports everything first (so the limit meets the pool, not the import), sets its own
# group's pids.max to what it holds plus k, runs the job, prints results and the report as JSON.
# STEPDOWN_TASKS_LEFT hides the limit from the plan, as on a host whose probe cannot read it:
# the rungs then meet the kernel's refusal at run time.
CHILD = textwrap.dedent(
    """
    import json, logging, sys, time
    import stepdown, stepdown.runner.engine, stepdown.planning.setup, stepdown.backends.thread
    import stepdown.backends.loky, stepdown.backends.process, loky, cloudpickle
    from tests.support.cgroups import Cgroup, pids_headroom
    from tests.support.tasks import square

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    k, ladder = int(sys.argv[1]), json.loads(sys.argv[2])
    stepdown.plan(tasks=40)
    group = Cgroup.current("pids")
    with pids_headroom(group, k):
        if len(sys.argv) > 3:
            time.sleep(1.1)  # let the plan's probe snapshot (up to 1 s old) see the limit
        run = stepdown.run(square, range(40), ladder=ladder, stall_timeout=2.0, reuse=False)
    rungs = [[r.label, r.started, r.reason, r.failure, r.finished, r.skipped]
             for r in run.report.rungs]
    print(json.dumps({"results": run.results, "rungs": rungs, "rerun": run.report.rerun}))
    """
)


def run_child(k: int, ladder: list[object], hide_limit: bool = True) -> dict[str, object]:
    skip_unless_cgroups("pids")
    env = {"STEPDOWN_TASKS_LEFT": "100000"} if hide_limit else {}
    with Cgroup("pids") as group:
        args = [str(k), json.dumps(ladder)] + ([] if hide_limit else ["fresh-probe"])
        code = f"import sys; sys.argv[1:] = {args!r}\n" + CHILD
        done = group.run_python(code, timeout=90, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # Workers of an abandoned loky pool may print their own failure to stdout too.
    line = next(x for x in done.stdout.splitlines() if x.startswith('{"results"'))
    report: dict[str, object] = json.loads(line)
    report["stderr"] = done.stderr
    return report


START_FAILURES = {
    Reason.CANNOT_START_THREAD.value,
    Reason.CANNOT_START_PROCESS.value,
    Reason.EXECUTOR_STALLED.value,
    Reason.EXECUTOR_BROKEN.value,
}


@pytest.mark.parametrize("k", [1, 4, 5])
def test_loky_in_a_full_pids_group_steps_down(k: int) -> None:
    report = run_child(k, ["loky:2", "thread:2"])
    assert report["results"] == [x * x for x in range(40)]
    rungs = report["rungs"]
    assert isinstance(rungs, list)
    label, _started, reason, failure, _finished, _skipped = rungs[0]
    assert label == "loky(2)"
    assert reason in START_FAILURES, rungs
    assert report["rerun"] == 0
    stderr = str(report["stderr"])
    assert "loky(2) could not start" in stderr or "loky(2) failed" in stderr, stderr
    assert "stepping down to thread(2)" in stderr
    if reason == Reason.CANNOT_START_THREAD.value:
        assert "can't start new thread" in str(failure) or "thread" in str(failure)


def test_thread_rung_in_a_full_pids_group_steps_down() -> None:
    report = run_child(0, ["thread:2"])
    assert report["results"] == [x * x for x in range(40)]
    rungs = report["rungs"]
    assert isinstance(rungs, list)
    assert rungs[0][0] == "thread(2)" and rungs[0][2] == Reason.CANNOT_START_THREAD.value
    assert rungs[-1][0] == "sequential" and rungs[-1][4] == 40
    assert "can't start new thread" in str(rungs[0][3])
    assert "thread(2) failed: cannot start a thread" in str(report["stderr"])


def test_plan_sees_a_full_pids_group() -> None:
    report = run_child(1, ["loky:2", "thread:2"], hide_limit=False)
    assert report["results"] == [x * x for x in range(40)]
    rungs = report["rungs"]
    assert isinstance(rungs, list)
    # The plan read pids.max - pids.current and never started a pool that could not fit.
    assert rungs[0][0].startswith("loky") and rungs[0][1] is False
    assert "pids or threads" in str(rungs[0][5]), rungs


def test_process_pool_whose_manager_dies_is_a_stall_not_a_hang() -> None:
    # With three pids to spare, the stdlib pool forks its two workers, and then its manager
    # thread dies starting the call queue's feeder thread: left alone, the pool waits forever.
    fork = {"backend": "process", "workers": 2, "start_method": "fork"}
    report = run_child(3, [fork, "thread:2"])
    assert report["results"] == [x * x for x in range(40)]
    rungs = report["rungs"]
    assert isinstance(rungs, list)
    assert rungs[0][0] == "process(2)"
    assert rungs[0][2] in START_FAILURES, rungs
    assert "stepping down to thread(2)" in str(report["stderr"])
