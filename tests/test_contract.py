"""One contract, every backend: results equal ``list(map(fn, items))``, in order, exceptions
unchanged."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import pytest

import stepdown
from stepdown.backends import registry
from stepdown.errors import RemoteTraceback

from tests.support.tasks import TaskBug, fails_on_7, pid, slow_square, square

pytestmark = pytest.mark.timeout(60)


def backend_of(run: stepdown.Run[object]) -> str:
    final = run.report.final_rung
    assert final is not None
    return final.split("(")[0]


def test_results_in_order(ladder: list[object]) -> None:
    run = stepdown.run(square, range(200), ladder=ladder)
    assert run.results == [x * x for x in range(200)]
    expected = ladder[0] if isinstance(ladder[0], str) else ladder[0]["backend"]  # type: ignore[index]
    assert backend_of(run) == str(expected).split(":")[0]
    assert run.report.rerun == 0
    assert not run.report.stepped_down


def test_empty_input(ladder: list[object]) -> None:
    assert stepdown.map(square, [], ladder=ladder) == []


def test_generator_input(ladder: list[object]) -> None:
    assert stepdown.map(square, (x for x in range(50)), ladder=ladder) == [x * x for x in range(50)]


def test_lambda_and_closure(ladder: list[object]) -> None:
    offset = 10
    assert stepdown.map(lambda x: x + offset, range(20), ladder=ladder) == list(range(10, 30))


def test_task_exception_unchanged(ladder: list[object]) -> None:
    with pytest.raises(TaskBug) as info:
        stepdown.run(fails_on_7, range(20), ladder=ladder)
    assert info.value.code == 7
    assert info.value.args == ("seven is bad", 7)
    if not registry.info(backend_of_ladder(ladder)).in_process:
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "fails_on_7" in str(info.value.__cause__)


def backend_of_ladder(ladder: list[object]) -> str:
    first = ladder[0]
    return first["backend"] if isinstance(first, dict) else str(first).split(":")[0]


def test_task_exception_returned(ladder: list[object]) -> None:
    run = stepdown.run(fails_on_7, range(20), ladder=ladder, errors="return")
    assert isinstance(run.results[7], TaskBug)
    assert run.results[:7] == list(range(7))
    assert run.results[8:] == list(range(8, 20))
    assert run.report.task_errors == 1
    assert not run.report.stepped_down


def test_imap_ordered_and_unordered(ladder: list[object]) -> None:
    assert list(stepdown.imap(slow_square, range(30), ladder=ladder)) == [x * x for x in range(30)]
    got = list(stepdown.imap(slow_square, range(30), ladder=ladder, ordered=False))
    assert sorted(got) == [x * x for x in range(30)]


def test_imap_reads_lazily(ladder: list[object]) -> None:
    pulled = itertools.count()

    def source():  # an endless generator: it must never be materialised
        for x in itertools.count():
            next(pulled)
            yield x

    results = stepdown.imap(square, source(), ladder=ladder)
    first = list(itertools.islice(results, 100))
    results.close()  # type: ignore[attr-defined]
    assert first == [x * x for x in range(100)]
    assert next(pulled) < 100_000


def test_runs_where_it_says(ladder: list[object]) -> None:
    pids = set(stepdown.map(pid, range(40), ladder=ladder, batch_size=1))
    if registry.info(backend_of_ladder(ladder)).in_process:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids


def test_main_module_function_in_processes(tmp_path: pytest.TempPathFactory) -> None:
    script = tmp_path / "job.py"  # type: ignore[operator]
    script.write_text(
        textwrap.dedent(
            """
            import stepdown

            def triple(x):
                return 3 * x

            if __name__ == "__main__":
                for ladder in (["process:2"], ["loky:2"]):
                    run = stepdown.run(triple, range(10), ladder=ladder)
                    assert run.results == [3 * x for x in range(10)], run.results
                    assert not run.report.stepped_down, str(run.report)
                print("ok")
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_executor_contract(ladder: list[object]) -> None:
    with stepdown.Executor(ladder=ladder) as ex:
        futures = [ex.submit(pow, 2, i) for i in range(10)]
        bad = ex.submit(fails_on_7, 7)
        assert [f.result(timeout=30) for f in futures] == [2**i for i in range(10)]
        assert list(ex.map(square, range(5))) == [0, 1, 4, 9, 16]
        with pytest.raises(TaskBug):
            bad.result(timeout=30)
        assert ex.submit(lambda: "closure").result(timeout=30) == "closure"
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(stepdown.UsageError, match="unknown backend 'lokky'.*known backends"):
        stepdown.run(square, [1], ladder=["lokky:2"])
    with pytest.raises(stepdown.UsageError, match="at least 1, not -2"):
        stepdown.run(square, [1], ladder=["loky:-2"])
    with pytest.raises(stepdown.UsageError, match="errors must be"):
        stepdown.run(square, [1], errors="ignore")  # type: ignore[arg-type]


def test_import_is_light() -> None:
    code = (
        "import sys, stepdown; "
        "print(sorted(m for m in ('loky', 'ray', 'joblib', 'cloudpickle') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names() -> None:
    assert sorted(stepdown.__all__) == [
        "BackendUnavailable",
        "Executor",
        "InitializerFailed",
        "Plan",
        "PolicyError",
        "Reason",
        "Report",
        "ResourceFailure",
        "Run",
        "StepdownError",
        "TaskCrashed",
        "TaskTimeout",
        "UsageError",
        "finished",
        "imap",
        "map",
        "plan",
        "run",
    ]
    for name in stepdown.__all__:
        assert getattr(stepdown, name) is not None
