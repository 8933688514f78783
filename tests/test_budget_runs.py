"""The host budget as runs meet it: rungs get the slots that are free, or are skipped."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepdown
from stepdown.budget.budget import Budget

from tests.support.tasks import square

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def budget_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("STEPDOWN_BUDGET", "on")
    monkeypatch.setenv("STEPDOWN_HOST_WORKERS", "2")
    return runtime


def _hold(n: int, ready: object, done: object, runtime: str) -> None:
    os.environ["XDG_RUNTIME_DIR"] = runtime
    grant = Budget(2).acquire(n, memory_per_slot=2**30, label="holder")
    assert grant.count == n
    ready.set()  # type: ignore[attr-defined]
    done.wait(30)  # type: ignore[attr-defined]


@pytest.fixture
def holder(budget_env: Path) -> Iterator[object]:
    """Another instance, in another process, that holds slots until the test ends."""
    context = multiprocessing.get_context("fork")
    processes = []

    def hold(n: int) -> None:
        ready, done = context.Event(), context.Event()
        process = context.Process(target=_hold, args=(n, ready, done, str(budget_env)))
        process.start()
        assert ready.wait(10)
        processes.append((process, done))

    yield hold
    for process, done in processes:
        done.set()
        process.join(10)


def test_free_slots_size_the_rung(holder: object) -> None:
    holder(1)  # type: ignore[operator]
    run = stepdown.run(square, range(20), ladder=["loky:2", "thread:2"])
    assert run.results == [x * x for x in range(20)]
    first = run.report.rungs[0]
    assert first.label == "loky(1)" and first.slots == "asked for 2, granted 1"
    assert run.report.final_rung == "loky(1)"


def test_full_budget_skips_to_the_guaranteed_sequential_slot(
    holder: object, warnings_log: pytest.LogCaptureFixture
) -> None:
    holder(2)  # type: ignore[operator]
    run = stepdown.run(square, range(20), ladder=["loky:2", "thread:2"])
    assert run.results == [x * x for x in range(20)]
    skipped = [r for r in run.report.rungs if r.skipped]
    assert [r.backend for r in skipped] == ["loky", "thread"]
    assert all("host budget full: 2 of 2 worker slots held" in str(r.skipped) for r in skipped)
    assert run.report.final_rung == "sequential"
    assert any("skipped: host budget full" in r.message for r in warnings_log.records)


def test_other_instances_reservations_shrink_the_plan(holder: object) -> None:
    holder(1)  # type: ignore[operator]
    chosen = stepdown.plan(tasks=10, ladder=["loky:2"])
    assert "reserved by other instances" in chosen.resources.memory_available.source


def test_slots_are_released_after_the_run(budget_env: Path) -> None:
    stepdown.run(square, range(10), ladder=["loky:2"])
    status = Budget(2).status()
    assert status.held == ()
