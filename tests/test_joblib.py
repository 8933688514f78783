"""The joblib backend "stepdown": joblib's own usage patterns, then real faults through Parallel.

Fault tests make the kernel fail (a SIGKILLed worker, a pids cgroup, ENOMEM at fork) and check
what the caller of ``Parallel`` sees: complete results, in order, and nothing finished run twice.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
from joblib import Parallel, delayed, parallel_backend, parallel_config

import stepdown
from stepdown.errors import Reason
from stepdown.integrations.joblib import StepdownBackend, register_joblib

from tests.support import tasks
from tests.support.cgroups import Cgroup, skip_unless_cgroups
from tests.support.faults import fork_fails_with_enomem
from tests.support.processes import gone_within
from tests.support.tasks import (
    TaskBug,
    counting_dir,
    counts,
    fails_on_7,
    hangs_on_3,
    record,
    square,
)

LOKY = ["loky:2", "thread:2"]
FORK = {"backend": "process", "workers": 2, "start_method": "fork"}


def where(_: object = None) -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


def nested(i: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    inner = Parallel(n_jobs=2)(delayed(where)(j) for j in range(3))
    return where(), inner


def burn(seconds: float) -> None:
    """Busy CPU for ``seconds`` of this process's CPU time."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def recorded(directory: str, i: int) -> int:
    record(directory, i, "start")
    burn(0.05)
    record(directory, i, "done")
    return i * i


def fails_fast_on_3(directory: str, i: int) -> int:
    record(directory, i)
    if i == 3:
        raise TaskBug("three is bad", 3)
    time.sleep(0.1)
    return i


def array_view(a: Any) -> tuple[str, bool, float, str | None]:
    return type(a).__name__, bool(a.flags.writeable), float(a.sum()), getattr(a, "filename", None)


@pytest.fixture
def config() -> Iterator[StepdownBackend]:
    with parallel_config(backend="stepdown", n_jobs=2, ladder=LOKY) as cfg:
        yield cfg["backend"]


# ---- joblib's own usage patterns ---------------------------------------------------------------


def test_import_stepdown_alone_does_not_import_joblib() -> None:
    code = "import sys, stepdown; print('joblib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["list", "generator", "generator_unordered"])
def test_return_as(mode: str, config: StepdownBackend) -> None:
    out = Parallel(return_as=mode)(delayed(square)(i) for i in range(50))
    if mode != "list":
        assert not isinstance(out, list)
    results = list(out)
    expected = [i * i for i in range(50)]
    assert (sorted(results) if mode == "generator_unordered" else results) == expected
    assert config.last_report is not None
    assert config.last_report.rungs[0].label == "loky(2)"


@pytest.mark.timeout(60)
def test_timeout_raises_without_waiting_for_the_slow_task(config: StepdownBackend) -> None:
    started = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):  # what joblib raises
        Parallel(timeout=0.5)(delayed(time.sleep)(t) for t in [0.01, 2.0, 0.01])
    assert time.monotonic() - started < 1.9


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ladder", [["loky:2"], ["thread:2"]], ids=["process", "thread"])
def test_task_exception_arrives_unchanged(ladder: list[str]) -> None:
    with (
        parallel_config(backend="stepdown", n_jobs=2, ladder=ladder),
        pytest.raises(TaskBug) as caught,
    ):
        Parallel()(delayed(fails_on_7)(i) for i in range(20))
    assert type(caught.value) is TaskBug
    assert caught.value.code == 7 and caught.value.args == ("seven is bad", 7)


@pytest.mark.timeout(60)
def test_task_exception_drops_the_rest(tmp_path: Path, config: StepdownBackend) -> None:
    directory = counting_dir(tmp_path)
    with pytest.raises(TaskBug):
        Parallel(batch_size=1)(delayed(fails_fast_on_3)(directory, i) for i in range(40))
    time.sleep(0.3)  # anything still running in a worker has finished by now
    ran = counts(directory)
    assert ran[3] == 1
    assert sum(ran.values()) < 15, ran
    assert all(n == 1 for n in ran.values())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_jobs", [1, 2, -1])
def test_n_jobs(n_jobs: int) -> None:
    with parallel_config(backend="stepdown", n_jobs=n_jobs) as cfg:
        places = Parallel()(delayed(where)(i) for i in range(20))
    backend = cfg["backend"]
    if n_jobs == 1:
        # As joblib does: one job runs in the caller, without the backend.
        assert set(places) == {where()}
        assert backend.last_report is None
        return
    assert backend.last_report is not None
    first = backend.last_report.rungs[0]
    assert 1 <= first.workers <= (2 if n_jobs == 2 else joblib.cpu_count())
    assert {pid for pid, _ in places} != {os.getpid()}


@pytest.mark.timeout(60)
def test_n_jobs_caps_every_rung(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPDOWN_CPUS", "8")  # the plan would give thread(8) otherwise
    with parallel_config(backend="stepdown", n_jobs=3, ladder=["thread:8"]) as cfg:
        Parallel()(delayed(square)(i) for i in range(10))
    assert [r.label for r in cfg["backend"].last_report.rungs] == ["thread(3)"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hint", [{"prefer": "threads"}, {"require": "sharedmem"}])
def test_threads_hint_runs_on_the_thread_rung(hint: dict[str, str]) -> None:
    seen: list[int] = []
    with parallel_config(backend="stepdown", n_jobs=2) as cfg:
        Parallel(**hint)(delayed(seen.append)(i) for i in range(20))
    assert sorted(seen) == list(range(20))  # the caller's own list: shared memory
    assert cfg["backend"].last_report.rungs[0].backend == "thread"


@pytest.mark.timeout(60)
def test_nested_parallel_runs_sequentially_in_the_task(config: StepdownBackend) -> None:
    for outer, inner in Parallel()(delayed(nested)(i) for i in range(4)):
        assert inner == [outer] * 3
        assert outer[0] != os.getpid()


@pytest.mark.timeout(60)
def test_parallel_backend_and_backend_argument() -> None:
    expected = [i * i for i in range(10)]
    with parallel_backend("stepdown", n_jobs=2, ladder=["thread:2"]) as (backend, n_jobs):
        assert isinstance(backend, StepdownBackend) and n_jobs == 2
        assert Parallel()(delayed(square)(i) for i in range(10)) == expected
    assert backend.last_report is not None
    assert Parallel(n_jobs=2, backend="stepdown")(delayed(square)(i) for i in range(10)) == expected
    instance = StepdownBackend(ladder=["thread:2"])
    assert Parallel(n_jobs=2, backend=instance)(delayed(square)(i) for i in range(10)) == expected
    assert instance.last_report is not None and instance.last_report.rungs[0].backend == "thread"
    per_call = Parallel(n_jobs=2, backend="stepdown", ladder=["thread:2"])
    assert per_call(delayed(square)(i) for i in range(10)) == expected


@pytest.mark.timeout(60)
def test_calls_in_one_context_keep_their_state_apart(config: StepdownBackend) -> None:
    first = Parallel(return_as="generator")(delayed(square)(i) for i in range(30))
    assert next(first) == 0
    assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
    assert list(first) == [i * i for i in range(1, 30)]
    with Parallel() as parallel:
        assert parallel(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
        assert parallel(delayed(square)(i) for i in range(3)) == [0, 1, 4]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"n_jobs": 2}, "(profile laptop, rules[1], joblib n_jobs=2)"),
        (
            {"n_jobs": 2, "ladder": ["thread:2"]},
            "(profile laptop, ladder argument, joblib n_jobs=2)",
        ),
        ({"n_jobs": 2, "prefer": "threads"}, "(profile laptop, joblib prefer='threads', n_jobs=2)"),
        ({"n_jobs": -1, "require": "sharedmem"}, "joblib require='sharedmem', n_jobs=-1 ("),
    ],
)
def test_report_says_where_the_ladder_came_from_and_counts_calls(
    given: dict[str, Any], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPDOWN_PROFILE", "laptop")
    hints = {k: given.pop(k) for k in ("prefer", "require") if k in given}
    with parallel_config(backend="stepdown", **given) as cfg:
        assert Parallel(**hints)(delayed(square)(i) for i in range(100)) == [
            i * i for i in range(100)
        ]
    report = cfg["backend"].last_report
    assert said in str(report)
    assert "ladder argument" not in str(report) or "ladder" in given
    # Its counts are joblib batches (joblib groups the 100 calls); the calls are counted too.
    assert report.calls == 100 and report.units == "joblib batches"
    assert str(report).startswith(f"{report.tasks} joblib batches of 100 calls in ")


def test_bad_options_are_named() -> None:
    with pytest.raises(stepdown.UsageError, match="unknown option.*ladderr"):
        Parallel(n_jobs=2, backend="stepdown", ladderr=["thread"])(delayed(square)(1) for _ in "a")
    with pytest.raises(stepdown.UsageError, match=r"ladder\[0\]: unknown backend 'lokky'"):
        StepdownBackend(ladder=["lokky:2"])
    with pytest.raises(stepdown.UsageError, match="stall_timeout"):
        register_joblib("bad", stall_timeout=0)


@pytest.mark.timeout(60)
def test_register_joblib_under_another_name_with_defaults() -> None:
    register_joblib("stepdown-threads", ladder=["thread:2"])
    with parallel_config(backend="stepdown-threads", n_jobs=2) as cfg:
        assert Parallel()(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    assert cfg["backend"].last_report.rungs[0].backend == "thread"


@pytest.mark.timeout(60)
def test_large_arrays_reach_process_workers_as_memmaps(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    big = np.arange(300_000, dtype=np.float64)  # 2.4 MB > max_nbytes=1M
    small = np.arange(10, dtype=np.float64)
    with parallel_config(backend="stepdown", n_jobs=2, ladder=["loky:2"], temp_folder=tmp_path):
        seen = Parallel()(delayed(array_view)(a) for a in [big, small, big])
    kind, writeable, total, filename = seen[0]
    assert (kind, writeable, total) == ("memmap", False, float(big.sum()))
    assert filename is not None and filename.startswith(str(tmp_path))
    assert seen[2][3] == filename  # dumped once per call
    assert seen[1][:3] == ("ndarray", True, float(small.sum()))
    assert list(tmp_path.iterdir()) == []  # the call's folder is gone
    with parallel_config(backend="stepdown", n_jobs=2, ladder=["loky:2"], max_nbytes=None):
        assert Parallel()(delayed(array_view)(big) for _ in "a")[0][:2] == ("ndarray", True)


class Held:
    """An input a worker should let go of once its batch is done; ``shipped`` once unpickled
    (a forked worker also holds the caller's own, as they were at the fork)."""

    def __init__(self, i: int) -> None:
        self.i = i
        self.shipped = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, shipped=True)


def held_in_this_process(_: Held) -> int:
    import gc

    gc.collect()
    return sum(isinstance(obj, Held) and obj.shipped for obj in gc.get_objects())


def appended(items: list[int]) -> int:
    items.append(1)
    return len(items)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_nbytes", ["1M", None], ids=["memmapping", "plain"])
def test_each_batch_gets_its_own_inputs_and_none_outlives_its_run(max_nbytes: str | None) -> None:
    with parallel_config(backend="stepdown", n_jobs=2, ladder=[FORK], max_nbytes=max_nbytes):
        # Equal inputs are still each batch's own: a task may change them.
        assert Parallel(batch_size=1)(delayed(appended)([]) for _ in range(24)) == [1] * 24
        # Only the running batch's input is alive in a worker, however many batches it ran.
        alive = Parallel(batch_size=1)(delayed(held_in_this_process)(Held(i)) for i in range(24))
    assert alive == [1] * 24


def test_tiny_batches_grow_eightfold_then_as_joblib_grows_them() -> None:
    backend = StepdownBackend()
    backend.parallel = Parallel()  # joblib's rule reads its verbosity
    assert backend.compute_batch_size() == 1  # nothing measured yet
    backend.batch_completed(1, 0.002)  # a round trip, hardly any work: grow fast
    assert backend.compute_batch_size() == 8
    assert backend.compute_batch_size() == 8  # until a batch of 8 comes back
    backend.batch_completed(8, 0.003)
    assert backend.compute_batch_size() == 64
    backend.batch_completed(64, 0.02)  # 8 x 20 ms is past stepdown's 50 ms: joblib's rule
    assert backend.compute_batch_size() == 128
    slow = StepdownBackend()
    slow.parallel = backend.parallel
    slow.batch_completed(1, 0.05)  # a 50 ms task batches exactly as with joblib's backends
    assert slow.compute_batch_size() == 2
    slow.terminate()  # joblib's reset after a call
    assert slow.compute_batch_size() == 1


# ---- faults, through Parallel ------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_worker_sigkilled_mid_run(tmp_path: Path, warnings_log: pytest.LogCaptureFixture) -> None:
    directory = counting_dir(tmp_path)
    finished_before_kill: set[int] = set()
    victims: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(counts(directory, "done")) >= 20:
                finished_before_kill.update(counts(directory, "done"))
                time.sleep(0.03)  # those results have surely reached the parent by now
                done = set(counts(directory, "done"))
                # start-<index>-<pid>-<uuid>: the pids of workers running an unfinished task
                running = [
                    int(name.split("-")[2])
                    for name in os.listdir(directory)
                    if name.startswith("start-") and int(name.split("-")[1]) not in done
                ]
                running = [pid for pid in running if pid != os.getpid()]
                if running:
                    victims.append(running[0])
                    os.kill(running[0], signal.SIGKILL)
                    return
            time.sleep(0.005)

    side = threading.Thread(target=killer)
    with parallel_config(backend="stepdown", n_jobs=2, ladder=LOKY) as cfg:
        side.start()
        results = Parallel(batch_size=1)(delayed(recorded)(directory, i) for i in range(40))
    side.join()

    assert victims, "the killer never fired"
    assert results == [i * i for i in range(40)]
    ran = counts(directory)
    assert set(ran) == set(range(40))
    assert all(ran[i] == 1 for i in finished_before_kill)
    report = cfg["backend"].last_report
    assert report.rungs[0].reason == Reason.WORKER_DIED.value
    assert sum(n - 1 for n in ran.values()) <= report.rerun
    assert any("SIGKILL" in r.message for r in warnings_log.records)


@pytest.mark.timeout(60)
def test_fork_fails_with_enomem() -> None:
    with (
        parallel_config(backend="stepdown", n_jobs=2, ladder=[FORK]) as cfg,
        fork_fails_with_enomem(),
    ):
        results = Parallel()(delayed(square)(i) for i in range(30))
    assert results == [i * i for i in range(30)]
    first, last = cfg["backend"].last_report.rungs[0], cfg["backend"].last_report.rungs[-1]
    assert (first.label, first.started, first.reason) == (
        "process(2)",
        False,
        Reason.OUT_OF_MEMORY.value,
    )
    assert last.label == "sequential" and last.finished > 0  # counted in joblib batches


# A child that tightens its own pids group right before the Parallel call and prints what
# happened. STEPDOWN_TASKS_LEFT blinds the plan to the limit, as when other processes take the
# pids between planning and starting: the executors then really fail to start threads.
CHILD = """
import json, logging, sys, time
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from joblib import Parallel, delayed, parallel_config
import stepdown.integrations.joblib
from tests.support.cgroups import Cgroup, pids_headroom
from tests.support.tasks import square

group = Cgroup.current("pids")
out = []
for k in {ks}:
    with parallel_config(backend="stepdown", n_jobs=2, ladder={ladder}, stall_timeout=1.0) as c:
        with pids_headroom(group, k):
            began = time.monotonic()
            results = Parallel()(delayed(square)(i) for i in range(30))
    report = c["backend"].last_report
    out.append({{
        "k": k,
        "ok": results == [i * i for i in range(30)],
        "seconds": time.monotonic() - began,
        "rungs": [[r.label, r.reason] for r in report.rungs if not r.skipped] if report else None,
        "skipped": [r.label for r in report.rungs if r.skipped] if report else None,
    }})
print("OUTCOME", json.dumps(out))
"""


def _run_in_pids_group(ks: list[int], ladder: list[Any], blind: bool) -> list[dict[str, Any]]:
    skip_unless_cgroups("pids")
    env = {"STEPDOWN_TASKS_LEFT": "100000"} if blind else {}
    code = textwrap.dedent(CHILD.format(ks=ks, ladder=ladder))
    with Cgroup("pids") as group:
        try:
            done = group.run_python(code, timeout=60, env=env)
        except subprocess.TimeoutExpired as hung:  # the child's faulthandler dump says where
            pytest.fail(f"the child hung; its threads:\n{(hung.stderr or '')[-6000:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    # Pool workers that could not start may print their tracebacks to the same stdout.
    line = next(x for x in done.stdout.splitlines() if x.startswith("OUTCOME "))
    outcome: list[dict[str, Any]] = json.loads(line.removeprefix("OUTCOME "))
    assert all(o["ok"] for o in outcome), outcome
    return outcome


@pytest.mark.timeout(120)
@pytest.mark.parametrize("k", [0, 1, 4, 5])
def test_thread_creation_fails_in_a_pids_cgroup(k: int) -> None:
    (outcome,) = _run_in_pids_group([k], LOKY, blind=True)
    rungs = outcome["rungs"]
    if k == 0:
        # Not even stepdown's own dispatch thread can start: the caller runs the batches.
        assert rungs == [["sequential", None]]
        return
    assert rungs[0][0] == "loky(2)" and rungs[0][1] is not None
    # The failed pool's workers are killed, which gives their pids back: with a few to
    # spare the thread rung may then start; with fewer it fails too, and sequential finishes.
    if rungs[1] == ["thread(2)", None]:
        assert len(rungs) == 2
    else:
        assert rungs[1] == ["thread(2)", Reason.CANNOT_START_THREAD.value]
        assert rungs[-1] == ["sequential", None]


@pytest.mark.timeout(120)
def test_plan_sees_the_pids_limit_and_avoids_the_failure() -> None:
    (outcome,) = _run_in_pids_group([4], LOKY, blind=False)
    assert outcome["rungs"] == [["thread(2)", None]]
    assert outcome["skipped"] == ["loky(2)"]  # by the plan, which says why in the report


@pytest.mark.timeout(120)
def test_nothing_hangs_when_the_pool_machinery_dies() -> None:
    # Around k=3 the pool's queue feeder thread cannot start: its manager thread dies and the
    # pool would wait forever (joblib's own loky backend hangs there). The watchdog steps down.
    # Each k in a fresh child: what a pool leaves behind would shift the count for the next.
    outcome = [_run_in_pids_group([k], [FORK, "thread:2"], blind=True)[0] for k in range(1, 6)]
    reasons = {o["k"]: o["rungs"][0][1] for o in outcome}
    assert Reason.EXECUTOR_STALLED.value in reasons.values(), outcome
    assert all(o["seconds"] < 10 for o in outcome), outcome


# ---- scikit-learn as a client ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_scikit_learn_gives_the_same_scores_as_loky() -> None:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    assert sklearn.__version__
    X, y = load_iris(return_X_y=True)

    def scores() -> tuple[list[float], list[float], dict[str, Any]]:
        cv = cross_val_score(LogisticRegression(max_iter=300), X, y, cv=3, n_jobs=2)
        grid = GridSearchCV(
            DecisionTreeClassifier(random_state=0), {"max_depth": [1, 2, 3]}, cv=3, n_jobs=2
        ).fit(X, y)
        return list(cv), list(grid.cv_results_["mean_test_score"]), grid.best_params_

    with parallel_config(backend="loky"):
        expected = scores()
    with parallel_config(backend="stepdown") as cfg:
        assert scores() == expected
    assert cfg["backend"].last_report is not None


@pytest.mark.timeout(60)
def test_joblib_timeout_stops_the_hung_batch(tmp_path: Path) -> None:
    """``Parallel(timeout=...)`` is each batch's task_timeout: joblib raises its TimeoutError
    within the timeout's reach, and the hung batch's worker is killed, not left running."""
    calls = counting_dir(tmp_path)
    tasks.RELEASE.clear()  # a forked worker inherits it: set, the task would not hang
    began = time.monotonic()
    try:
        with pytest.raises(multiprocessing.TimeoutError):  # what joblib's own timeout raises
            Parallel(n_jobs=2, backend="stepdown", timeout=1.0)(
                delayed(hangs_on_3)((calls, i)) for i in range(6)
            )
    finally:
        tasks.RELEASE.set()
    assert time.monotonic() - began < 20
    assert counts(calls)[3] == 1
    # The hung worker is stopped, not left running: task_timeout killed it.
    (hung,) = [int(n.split("-")[2]) for n in os.listdir(calls) if n.startswith("start-3-")]
    assert gone_within(hung, 10)
