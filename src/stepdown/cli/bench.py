"""``stepdown bench``: what each rung of the active plan buys on this machine.

Runs a short CPU-bound workload on every rung the plan would use, one rung at a time, plus
sequential as the baseline, and reports wall time, speed-up and the peak memory of this process
and its children — the table a user reads to decide whether the ladder fits. Then it measures
what starting each kind of pool costs here (:func:`stepdown.planning.startup.measure`), which
the planner reads from then on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..api import run
from ..planning.resources import tree_rss
from ..planning.rung import Rung, ending_last
from ..planning.setup import plan
from ..planning.startup import Cost, measure
from ..units import format_size

__all__ = ["BenchResult", "bench", "burn", "calibrate"]

_TASK_SECONDS = 0.02


def burn(n: int) -> int:
    """About ``n`` iterations of pure-Python arithmetic: CPU work that holds the GIL."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1_000_003
    return total


def calibrate(seconds: float) -> int:
    """How many :func:`burn` iterations take ``seconds`` of this process's CPU time."""
    n = 20_000
    while True:
        began = time.process_time()
        burn(n)
        spent = time.process_time() - began
        if spent > 0.01:
            return max(1, int(n * seconds / spent))
        n *= 4


class _PeakMemory:
    """Samples the RSS of this process and its children while a rung runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _total(self) -> int:
        return tree_rss(os.getpid())

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._total())

    def __enter__(self) -> _PeakMemory:
        self.peak = self._total()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Row:
    rung: str
    workers: int
    wall: float
    speedup: float
    start: float
    peak_memory: int


@dataclass(frozen=True)
class BenchResult:
    tasks: int
    task_seconds: float
    profile: str
    rows: tuple[Row, ...]
    startup: dict[str, Cost]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"stepdown bench: {self.tasks} tasks of ~{self.task_seconds * 1000:.0f} ms CPU, "
            f"profile {self.profile}, {os.cpu_count()} CPUs on the host",
            "",
            "| rung | workers | wall (s) | speed-up vs sequential | start-up (ms) | peak memory |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row.rung} | {row.workers} | {row.wall:.2f} | {row.speedup:.2f}x "
                f"| {row.start * 1000:.0f} | {format_size(row.peak_memory)} |"
            )
        lines.append("")
        lines.append("Start-up is a cold pool's; a warm pool (reused within one process) costs 0.")
        lines += [
            "",
            "start-up cost of each kind of pool, measured in fresh interpreters (median of 3):",
            "",
            "| kind | start (ms) | imports (ms) | source |",
            "|---|---:|---:|---|",
        ]
        for kind, cost in self.startup.items():
            lines.append(
                f"| {kind} | {cost.start * 1000:.1f} | {cost.imports * 1000:.1f} | {cost.source} |"
            )
        lines.append("")
        lines.append(
            "start: creating the pool until a worker has answered, imports done; "
            "imports: what a cold script pays first."
        )
        return "\n".join(lines)


def _measure(rung: Rung, n: int, tasks: int) -> tuple[float, float, int]:
    with _PeakMemory() as memory:
        began = time.perf_counter()
        done = run(burn, [n] * tasks, ladder=[rung], reuse=False)
        wall = time.perf_counter() - began
    record = done.report.rungs[0]
    return wall, record.start_seconds, memory.peak


def bench(
    tasks: int = 40,
    profile: str | None = None,
    policy: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> BenchResult:
    """Measure each usable rung of the plan for ``tasks`` tasks, and sequential; then the
    start-up cost of each kind of pool (stored for the planner)."""
    chosen = plan(tasks=tasks, profile=profile, policy=policy)
    n = calibrate(_TASK_SECONDS)
    rungs = list(ending_last(chosen.usable_rungs()))
    measured = {id(r): _measure(r, n, tasks) for r in rungs}
    baseline = measured[id(rungs[-1])][0]
    rows = tuple(
        Row(
            rung=rung.label(),
            workers=rung.workers or 1,
            wall=measured[id(rung)][0],
            speedup=baseline / measured[id(rung)][0],
            start=measured[id(rung)][1],
            peak_memory=measured[id(rung)][2],
        )
        for rung in rungs
    )
    startup = measure(by="stepdown bench")
    return BenchResult(tasks, _TASK_SECONDS, chosen.profile, rows, startup)
