"""Eight instances of a memory-hungry job in one memory + pids cgroup: the Kaggle scenario.

Each instance (``tests/support/jobs.py``) scores 10 items; a task holds 200 MiB (every page
written) and burns ~0.37 s of CPU. The group is sized between what the budget lets the eight
instances hold at once and what eight unbudgeted pools would hold:

    budget on   2 slots (2 CPUs) run in loky workers, the 6-7 instances that find the budget
                full run their guaranteed sequential slot in the parent: at most 9 tasks at
                once, ~1.9 GiB measured peak (9 x 200 MiB + 8 parents + 2 workers)
    raw joblib  8 x Parallel(n_jobs=3): 24 tasks at once, ~5.6 GiB measured peak in a 6 GiB
                group (no kill there); 80 pids (joblib's parent imports numpy: OpenBLAS threads)

    memory.limit_in_bytes = memsw = 2.5 GiB, pids.max = 64

The first test proves the calibration (unbudgeted joblib is OOM-killed or cannot fork here);
the second is the claim (with the budget, all eight finish with the right results and the
group's OOM-kill counter stays 0); the third shows what stepdown does with the budget switched off
(each instance shrinks its pool as memory runs out; no parent is killed, a task that gets no
memory even alone fails with MemoryError); the fourth is a profile that declares nothing (the
budget is on by default, task memory is learned). The budget cannot protect below
``instances x (parent + task)``: the sequential slot is guaranteed so that every instance makes
progress (``on_exhausted = "wait"`` queues instances instead, see docs/multi-instance.md).

Root, cgroups (v1 or v2) with the memory and pids controllers, and about 3 GiB of free memory
are needed; elsewhere the tests skip with the reason. ``pytest -s`` prints what each instance did.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import cgroups, jobs

INSTANCES = 8
TASKS = 10
MIB = 200
ROUNDS = 2
MEMORY_LIMIT = 5 * 2**29  # 2.5 GiB
PIDS_MAX = 64
HOST_WORKERS = 2  # the budget's size: this machine's CPUs, pinned so other hosts see the same

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cgroups are Linux only"),
]


def _available_memory() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


@pytest.fixture(scope="module")
def expected() -> list[str]:
    """The results of one instance, computed one after the other in the test process."""
    return jobs.expected(TASKS, MIB, ROUNDS)


@pytest.fixture
def group() -> Iterator[cgroups.Cgroup]:
    cgroups.skip_unless_cgroups("memory", "pids")
    available = _available_memory()
    if available is not None and available < MEMORY_LIMIT + 2**29:
        pytest.skip(
            f"needs {(MEMORY_LIMIT + 2**29) / 2**30:.1f} GiB of free memory for a "
            f"{MEMORY_LIMIT / 2**30:.1f} GiB group, {available / 2**30:.1f} GiB free"
        )
    with cgroups.Cgroup("memory", "pids", name="multi") as g:
        g.set_memory_limit(MEMORY_LIMIT)
        g.set_pids_max(PIDS_MAX)
        yield g


@pytest.fixture
def runtime(tmp_path: Path) -> str:
    """A private XDG_RUNTIME_DIR shared by the eight instances: one host budget for them."""
    directory = tmp_path / "runtime"
    directory.mkdir(mode=0o700)
    return str(directory)


def _run(
    group: cgroups.Cgroup, mode: str, runtime: str, timeout: float
) -> tuple[list[jobs.Instance], float]:
    env = {"XDG_RUNTIME_DIR": runtime, "STEPDOWN_HOST_WORKERS": str(HOST_WORKERS)}
    began = time.time()
    instances = jobs.start_instances(
        group, mode, INSTANCES, tasks=TASKS, mib=MIB, rounds=ROUNDS, env=env
    )
    ended = jobs.wait_instances(group, instances, timeout)
    return instances, ended - began


def _pids_refused(group: cgroups.Cgroup) -> int:
    """How often the pids controller refused a fork or a thread (``pids.events max``)."""
    events = group._file("pids", "pids.events")
    if not events.exists():
        return 0
    return cgroups.parse_flat_keyed(events.read_text()).get("max", 0)


def _show(
    title: str, group: cgroups.Cgroup, instances: list[jobs.Instance], wall: float
) -> str:
    done = sum(i.completed for i in instances)
    lines = [
        f"{title}: {done}/{len(instances)} completed in {wall:.1f} s, "
        f"OOM kills {group.oom_kills()}, pids refusals {_pids_refused(group)}",
        *(f"  {i.describe()}" for i in instances),
    ]
    text = "\n".join(lines)
    print(text)
    return text


def _stderr(instances: list[jobs.Instance]) -> str:
    return "\n".join(f"--- {i.name}\n{i.stderr[-3000:]}" for i in instances)


@pytest.mark.timeout(120)
def test_calibration_unbudgeted_joblib_pools_are_killed_in_this_group(
    group: cgroups.Cgroup, runtime: str
) -> None:
    """The group is tight enough: eight raw ``joblib.Parallel(n_jobs=3)`` do not all survive."""
    pytest.importorskip("joblib")
    # A loky pool that cannot start a thread may hang forever: 40 s is 4x a clean run.
    instances, wall = _run(group, "joblib", runtime, timeout=40)
    text = _show("raw joblib, n_jobs=3", group, instances, wall)
    failed = [i for i in instances if not i.completed]
    assert failed, f"every raw joblib instance survived: the group is too loose\n{text}"
    assert group.oom_kills() + _pids_refused(group) > 0, text


@pytest.mark.timeout(120)
def test_eight_budgeted_instances_all_complete_without_an_oom_kill(
    group: cgroups.Cgroup, runtime: str, expected: list[str]
) -> None:
    instances, wall = _run(group, "stepdown-budget", runtime, timeout=90)
    text = _show("stepdown, budget on", group, instances, wall)
    for instance in instances:
        assert instance.completed, f"{instance.describe()}\n{text}\n{_stderr([instance])}"
        assert instance.output is not None
        assert instance.output["results"] == expected, instance.name
    # Nothing was killed: not a worker, not a parent holding its sequential task.
    assert group.oom_kills() == 0, f"{text}\n{_stderr(instances)}"
    assert _pids_refused(group) == 0, text

    # Every rung asked the budget: the ones that found it full were skipped (granted 0) with
    # a WARNING, the ones that ran got >= 1 slot; the sequential rung always got its one.
    granted_workers = 0
    for instance in instances:
        assert instance.output is not None
        report = instance.output["report"]
        assert report["rerun"] == 0 and not report["crashed"], instance.describe()
        started = [r for r in report["rungs"] if not r["skipped"]]
        assert len(started) == 1 and started[0]["failure"] is None, instance.describe()
        for rung in report["rungs"]:
            assert rung["slots"] is not None, instance.describe()
            if rung["skipped"]:
                assert rung["slots"].endswith("granted 0"), instance.describe()
                assert "host budget full" in rung["skipped"], instance.describe()
            elif rung["backend"] == "sequential":
                assert rung["slots"] == "asked for 1, granted 1", instance.describe()
            else:
                granted_workers += rung["workers"]
        assert "budget: asked for" in instance.stderr
    assert granted_workers >= 1, f"no instance ran a pool: \n{text}"
    skipped = [i for i in instances if "skipped: host budget full" in i.stderr]
    assert len(skipped) >= INSTANCES - HOST_WORKERS, f"{text}\n{_stderr(instances)}"


@pytest.mark.timeout(120)
def test_eight_unbudgeted_instances_step_down_and_lose_no_result(
    group: cgroups.Cgroup, runtime: str, expected: list[str]
) -> None:
    """Without the budget every instance plans loky(2) alone: 16 tasks at once do not fit.

    Each instance shrinks its pool as memory runs out (its guard stops a worker, or a task
    outgrows its share and gets a MemoryError); what the others hold is not its to free, so a
    task that does not get its memory even with one worker is that task's MemoryError (the
    jobs raise it). What must hold: no instance hangs, no parent is killed, an instance ends
    only with its results or a task's MemoryError, and one that finishes has every result
    right.
    """
    instances, wall = _run(group, "stepdown-nobudget", runtime, timeout=90)
    text = _show("stepdown, budget off", group, instances, wall)
    for instance in instances:
        assert not instance.timed_out, f"{text}\n{_stderr([instance])}"
        if instance.returncode == 0:
            assert instance.output is not None and instance.output["ok"]
            assert instance.output["results"] == expected, instance.name
        else:
            assert instance.returncode == 1, f"{text}\n{_stderr([instance])}"
            assert instance.output is not None, text
            error = instance.output["error"] or ""
            assert error.startswith("MemoryError"), f"{text}\n{_stderr([instance])}"


@pytest.mark.timeout(120)
def test_eight_instances_that_declare_nothing_all_complete_without_an_oom_kill(
    group: cgroups.Cgroup, runtime: str, expected: list[str]
) -> None:
    """A user's own profile, ``ladder = ["loky:3", "thread:2", "sequential"]``, with no budget
    table and no task memory: the budget is on by default, and what a task holds is learned.
    Before, two of eight parents were OOM-killed after their tasks moved into them."""
    instances, wall = _run(group, "stepdown-undeclared", runtime, timeout=100)
    text = _show("stepdown, a profile that declares nothing", group, instances, wall)
    for instance in instances:
        assert instance.completed, f"{instance.describe()}\n{text}\n{_stderr([instance])}"
        assert instance.output is not None
        assert instance.output["results"] == expected, instance.name
        assert "budget: asked for" in instance.stderr, instance.describe()
    assert group.oom_kills() == 0, f"{text}\n{_stderr(instances)}"
