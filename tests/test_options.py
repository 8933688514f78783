"""One ``Options``: every option declared once, typed at every entry point, checked once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

import stepdown
from stepdown.integrations.joblib import StepdownBackend
from stepdown.options import BackendOptions, ExecutorOptions, Options, RunOptions
from stepdown.planning.resources import probe

from tests.support.tasks import square


def test_the_keyword_options_are_the_options_fields() -> None:
    fields = set(Options.names())
    assert set(RunOptions.__optional_keys__) == fields - {"errors", "ordered", "progress"}
    assert set(BackendOptions.__optional_keys__) == set(RunOptions.__optional_keys__) - {
        "batch_size"
    }
    # The executor takes ProcessPoolExecutor's own as that does (max_workers positional, ...).
    assert set(ExecutorOptions.__optional_keys__) == set(BackendOptions.__optional_keys__) - {
        "ladder",
        "max_workers",
        "initializer",
        "initargs",
    }
    # The same types as the dataclass declares them (both are strings: postponed annotations).
    hints = typing.get_type_hints(Options)
    for key, hint in typing.get_type_hints(RunOptions).items():
        assert hint == hints[key], key


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("errors", "ignore", "errors must be 'raise' or 'return', not 'ignore'"),
        ("memory_error", "skip", "memory_error must be 'step-down' or 'raise', not 'skip'"),
        ("stall_timeout", 0, "stall_timeout must be a positive number of seconds, not 0"),
        ("stall_timeout", True, "stall_timeout must be a positive number of seconds, not True"),
        ("batch_size", 0, "batch_size must be a whole number of at least 1, not 0"),
        ("max_workers", -2, "max_workers must be a whole number of at least 1, not -2"),
        ("reuse", "yes", "reuse must be True or False, not 'yes'"),
        ("progress", "auto", "progress must be True, False or None, not 'auto'"),
        ("task_memory", "lots", "task_memory: not a size: 'lots'"),
        ("task_timeout", 0, "task_timeout must be a positive number of seconds, not 0"),
        ("task_timeout", "9", "task_timeout must be a positive number of seconds, not '9'"),
        ("initializer", 5, "initializer must be callable, not 5"),
        ("initargs", "ab", "initargs must be a tuple, not 'ab'"),
        ("max_tasks_per_child", 0, "max_tasks_per_child must be a whole number of at least 1"),
        ("start_method", "vfork", "start_method must be one of auto, fork, forkserver, spawn"),
        ("ladder", ["lokky:2"], r"ladder\[0\]: unknown backend 'lokky'"),
    ],
)
def test_a_bad_value_names_the_option_and_the_value(
    option: str, value: object, message: str
) -> None:
    with pytest.raises(stepdown.UsageError, match=message):
        Options(**{option: value})
    # Every entry point checks with the same words, before anything runs.
    if option in ("errors", "progress"):
        with pytest.raises(stepdown.UsageError, match=message):
            stepdown.run(square, [1], **{option: value})
        return
    with pytest.raises(stepdown.UsageError, match=message):
        stepdown.map(square, [1], **{option: value})
    if option != "batch_size" and option != "ladder":
        with pytest.raises(stepdown.UsageError, match=message):
            stepdown.Executor(**{option: value})
    if option != "batch_size":
        with pytest.raises(stepdown.UsageError, match=message):
            StepdownBackend(**{option: value})


def test_parsed_once() -> None:
    options = Options(ladder="loky:2", task_memory="1.5GiB")
    assert [r.label() for r in options.rungs or ()] == ["loky(2)", "sequential"]
    assert options.task_bytes == 3 * 2**29


def test_max_workers_caps_every_rung_and_keeps_the_policy() -> None:
    if (probe().cpus.value or 1) < 2:
        pytest.skip("needs 2 CPUs to see a cap of 1 at work")
    chosen = stepdown.plan(tasks=40, profile="laptop", max_workers=1)
    usable = [p.label for p in chosen.rungs if not p.skipped]
    assert usable == ["process(1) start_method=fork", "thread(1)", "sequential"]
    assert chosen.rule.label == "rules[1]"
    assert "max_workers 1" in chosen.rungs[0].reason
    run = stepdown.run(square, range(10), ladder=["thread:4"], max_workers=1)
    assert run.results == [x * x for x in range(10)]
    assert run.report.final_rung == "thread(1)"


def test_a_misspelt_option_fails_the_type_check(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        textwrap.dedent(
            """
            import stepdown

            def f(x: int) -> int:
                return x

            ok: list[int] = stepdown.map(f, [1], ladder=["thread:2"], max_workers=2)
            with stepdown.Executor(2, ladder=["thread:2"], stall_timeout=2.0) as ex:
                ex.submit(f, 1)
            kept: list[int | BaseException] = stepdown.map(f, [1], [2], errors="return")
            bad = stepdown.map(f, [1], lader=["thread:2"])
            worse = stepdown.run(f, [1], reuse="yes")
            mixed: list[int] = stepdown.map(f, [1], errors="return")
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    # Only the three bad lines fail (the snippet's lines 11, 12 and 13).
    assert {line.split(":")[1] for line in errors} == {"11", "12", "13"}, out.stdout
    assert any('Unexpected keyword argument "lader"' in line for line in errors), out.stdout
    assert any(":12: error:" in line and '"run"' in line for line in errors), out.stdout
    # errors="return" is typed with the exceptions among the results.
    assert any(":13: error:" in e and "list[int | BaseException]" in e for e in errors)
