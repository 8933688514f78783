"""``run``/``map``/``imap`` as drop-ins for the builtin ``map`` and a worker pool: several
iterables, an initializer, worker recycling, a start method, and errors that keep what finished
and say which task raised, with the task's real file and line."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import stepdown
from stepdown.errors import RemoteTraceback

from tests.support.tasks import TaskBug, fails_on_7, pid, square

pytestmark = pytest.mark.timeout(60)

STATE: dict[str, object] = {}


def remember(key: str, value: object) -> None:
    STATE[key] = value


def with_state(x: int) -> tuple[object, int, int]:
    return STATE.get("seed"), x, os.getpid()


def add(x: int, y: int, z: int = 0) -> int:
    return x + y + z


def test_several_iterables_zip_like_the_builtin(ladder: list[object]) -> None:
    assert stepdown.map(add, range(10), range(100, 105), ladder=ladder) == list(
        map(add, range(10), range(100, 105))
    )
    assert stepdown.map(pow, [2, 3], (x for x in [5, 2]), ladder=ladder) == [32, 9]
    assert list(stepdown.imap(add, [1, 2], [3, 4], [5, 6], ladder=ladder)) == [9, 12]


def test_several_iterables_keep_their_length_for_the_plan() -> None:
    run = stepdown.run(add, range(30), range(20), ladder=["thread:2"])
    assert run.report.tasks == 20
    assert run.results == [2 * x for x in range(20)]


def test_the_initializer_runs_in_every_worker_before_its_tasks(ladder: list[object]) -> None:
    STATE.clear()
    run = stepdown.run(
        with_state, range(12), ladder=ladder, initializer=remember, initargs=("seed", 42)
    )
    assert [r[:2] for r in run.results] == [(42, x) for x in range(12)]


def test_a_failing_initializer_is_one_clear_error_not_a_step_down(ladder: list[object]) -> None:
    with pytest.raises(stepdown.InitializerFailed) as info:
        stepdown.run(square, range(10), ladder=ladder, initializer=fails_on_7, initargs=(7,))
    assert isinstance(info.value.__cause__, TaskBug)
    assert "TaskBug" in str(info.value)


def test_an_initializer_from_main_shares_the_tasks_globals(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import stepdown

            def setup(value):
                global MODEL
                MODEL = value

            def score(x):
                return MODEL * x

            if __name__ == "__main__":
                for ladder in (["process:2"], ["loky:2"], ["thread:2"]):
                    print(stepdown.map(score, range(4), ladder=ladder, initializer=setup,
                                       initargs=(10,)))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.splitlines() == ["[0, 10, 20, 30]"] * 3, out.stderr


@pytest.mark.parametrize(
    "ladder",
    [
        [{"backend": "process", "workers": 2, "start_method": "fork"}],
        [{"backend": "process", "workers": 2, "start_method": "forkserver"}],
        ["loky:2"],
    ],
)
def test_max_tasks_per_child_recycles_workers(ladder: list[object]) -> None:
    run = stepdown.run(pid, range(20), ladder=ladder, max_tasks_per_child=3)
    per_pid = collections.Counter(run.results)
    assert max(per_pid.values()) <= 3, per_pid
    assert len(per_pid) >= 7
    assert not run.report.stepped_down
    assert run.report.rungs[-1].renewed >= 1


def test_max_tasks_per_child_is_ignored_in_process() -> None:
    run = stepdown.run(pid, range(20), ladder=["thread:2"], max_tasks_per_child=1)
    assert set(run.results) == {os.getpid()}


def test_start_method_is_every_process_rungs() -> None:
    chosen = stepdown.plan(
        tasks=40, ladder=[{"backend": "process", "start_method": "fork"}, "loky:2"]
    )
    assert chosen.rungs[0].rung.options["start_method"] == "fork"
    with stepdown.Executor(ladder=["process:2"], start_method="spawn") as ex:
        assert ex.submit(square, 4).result() == 16
        assert ex._engine.rungs[0].options["start_method"] == "spawn"


def test_a_raised_task_exception_names_the_task_and_keeps_what_finished() -> None:
    with pytest.raises(TaskBug) as info:
        stepdown.map(fails_on_7, range(20), ladder=["sequential"])
    assert stepdown.finished(info.value) == {i: i for i in range(7)}
    notes = getattr(info.value, "__notes__", [])
    if sys.version_info >= (3, 11):
        assert notes == ["stepdown: raised by task 7 (item 7)"]


def test_finished_results_survive_an_exception_from_imap() -> None:
    results = stepdown.imap(fails_on_7, range(20), ladder=["thread:2"], batch_size=1)
    seen = []
    with pytest.raises(TaskBug) as info:
        for value in results:
            seen.append(value)
    kept = stepdown.finished(info.value)
    assert seen == list(range(7))
    assert all(kept[i] == i for i in kept) and 7 not in kept


def test_finished_is_empty_for_other_exceptions() -> None:
    assert stepdown.finished(ValueError("not a task's")) == {}


def test_the_worker_traceback_names_the_tasks_real_file(tmp_path: Path) -> None:
    script = tmp_path / "scoring.py"
    script.write_text(
        textwrap.dedent(
            """
            import stepdown

            def score(x):
                if x == 3:
                    raise ValueError("bad sample")
                return x

            if __name__ == "__main__":
                stepdown.map(score, range(6), ladder=["process:2"])
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f'File "{script}", line 6, in score' in out.stderr, out.stderr
    assert "<dynamic-code>" not in out.stderr


def test_the_note_names_the_task_on_every_rung(ladder: list[object]) -> None:
    with pytest.raises(TaskBug) as info:
        stepdown.run(fails_on_7, range(20), ladder=ladder)
    if sys.version_info >= (3, 11):
        assert "stepdown: raised by task 7 (item 7)" in info.value.__notes__
    if isinstance(info.value.__cause__, RemoteTraceback):  # the worker's, kept beside the note
        assert "fails_on_7" in str(info.value.__cause__)


BARRIER = threading.Barrier(2, timeout=10)


def meet_at_0_and_10(x: int) -> int:
    """Items 0 and 10 (in two different batches of 10) can only finish together."""
    if x in (0, 10):
        BARRIER.wait()
    return x


def test_a_fixed_batch_size_keeps_several_batches_in_flight() -> None:
    """In input order, the read-ahead window is counted in batches of the fixed size: a batch
    of 10 must not hold back the next one (it did: one batch at a time, half the workers)."""
    BARRIER.reset()
    run = stepdown.run(meet_at_0_and_10, range(20), ladder=["thread:2"], batch_size=10)
    assert run.results == list(range(20))


def heavy_modules(*_: object) -> list[str]:
    """Which of stepdown's caller-side modules this process has imported."""
    heavy = ("stepdown.api", "stepdown.executor", "stepdown.options", "stepdown.planning")
    return sorted(name for name in sys.modules if name.startswith(heavy))


def test_a_loky_worker_imports_only_the_worker_side_of_stepdown() -> None:
    """Calls, map's chunks and several iterables all arrive as light wrappers: a fresh worker
    does not import the planner, the options or the executor to run them."""
    assert stepdown.map(heavy_modules, [1], [2], ladder=["loky:1"], reuse=False) == [[]]
    with stepdown.Executor(1, ladder=["loky:1"], reuse=False) as ex:
        assert ex.submit(heavy_modules).result() == []
        assert list(ex.map(heavy_modules, [1, 2])) == [[], []]
