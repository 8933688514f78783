"""The ray rung against Ray used directly, on one private local Ray (2 CPUs).

    .venv/bin/python -m benchmarks.bench_ray [--repeat N] [--json PATH]

Workloads (each task burns CPU in an arithmetic loop calibrated with ``time.process_time``, so
a wall-clock spin cannot pass for work):

A   10,000 tasks of ~10 us CPU (per-task overhead dominates)
B   40 tasks of ~50 ms CPU (2 workers should halve the sequential time)

Peers, all on the same Ray instance, timed warm (start-up is reported on its own lines). Each
peer runs once per round; rounds interleave the peers (so a burst of noise from other processes
spreads over all of them) and the median of ``--repeat`` rounds (default 3) is reported.

stepdown      ``stepdown.run(fn, items, ladder=["ray:2"])``: batches, 4 in flight
raw tasks     one ``@ray.remote`` task per item, then ``ray.get`` of all refs
Ray Pool      ``ray.util.multiprocessing.Pool(2).map(fn, items)`` (its own chunking)

Targets: B at most 1.1x the Ray Pool; A at most 0.2x raw per-task Ray. Ratios are
stepdown / peer. The task functions are imported as the module ``bench_ray`` so that every peer
pickles them by reference, as it would a library function.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

WORKERS = 2
A_TASKS, A_SECONDS = 10_000, 10e-6
B_TASKS, B_SECONDS = 40, 50e-3
TARGETS = {"A": ("raw tasks", 0.2), "B": ("Ray Pool", 1.1)}


def burn(n: int, i: int) -> int:
    """``n`` iterations of integer arithmetic: pure CPU, holds the GIL throughout."""
    x = i
    for k in range(n):
        x = (x * 31 + k) & 0xFFFFF
    return x


def _cpu(n: int) -> float:
    best = math.inf
    for _ in range(5):
        t0 = time.process_time()
        burn(n, 0)
        best = min(best, time.process_time() - t0)
    return best


def iterations_for(seconds: float) -> tuple[int, float]:
    """Iterations of ``burn`` that take ``seconds`` of CPU here, and what they measured."""
    n = 1000
    while _cpu(n) < 0.01:
        n *= 2
    per_iter = _cpu(n) / n
    n = max(1, round(seconds / per_iter))
    for _ in range(2):
        n = max(1, round(n * seconds / max(_cpu(n), 1e-9)))
    return n, _cpu(n)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    value = call()
    return time.perf_counter() - began, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import ray
    from ray.util.multiprocessing import Pool

    import stepdown
    from stepdown.backends.ray import stop

    from benchmarks.bench_ray import burn as task  # by reference, for every peer

    os.environ.pop("RAY_ADDRESS", None)  # the private instance, whatever the shell says
    ladder = [f"ray:{WORKERS}"]
    figures: dict[str, Any] = {"ray": ray.__version__, "cpus": os.cpu_count()}

    # Start-up, on its own: stepdown's private instance, then the Pool's actors on it.
    seconds, run = timed(lambda: stepdown.run(partial(task, 10), range(4), ladder=ladder))
    figures["ray_start"] = run.report.rungs[0].start_seconds
    figures["first_run"] = seconds
    seconds, pool = timed(lambda: Pool(WORKERS))
    pool.map(partial(task, 10), range(4))
    figures["pool_start"] = seconds
    remote = ray.remote(task)
    ray.get([remote.remote(10, i) for i in range(4)])

    rows = []
    for name, tasks, target in (("A", A_TASKS, A_SECONDS), ("B", B_TASKS, B_SECONDS)):
        n, cpu = iterations_for(target)
        fn = partial(task, n)
        items = list(range(tasks))
        expected = [task(n, i) for i in items] if name == "B" else None
        peers: dict[str, Callable[[], list[Any]]] = {
            "stepdown ray:2": lambda fn=fn, items=items: (
                stepdown.run(fn, items, ladder=ladder).results
            ),
            "raw tasks": lambda n=n, items=items: ray.get([remote.remote(n, i) for i in items]),
            "Ray Pool": lambda fn=fn, items=items: pool.map(fn, items),
        }
        samples: dict[str, list[float]] = {peer: [] for peer in peers}
        for _ in range(max(1, args.repeat)):
            for peer, call in peers.items():
                seconds, results = timed(call)
                assert len(results) == tasks and (expected is None or results == expected), peer
                samples[peer].append(seconds)
        wall = {peer: statistics.median(times) for peer, times in samples.items()}
        baseline, limit = TARGETS[name]
        ratio = wall["stepdown ray:2"] / wall[baseline]
        rows.append(
            {
                "workload": name,
                "tasks": tasks,
                "task_cpu": cpu,
                "wall": wall,
                "per_task_us": {k: v / tasks * 1e6 for k, v in wall.items()},
                "ratio_vs": baseline,
                "ratio": ratio,
                "target": limit,
                "met": ratio <= limit,
            }
        )
    pool.terminate()
    seconds, _ = timed(stop)
    figures["ray_stop"] = seconds
    figures["rows"] = rows

    print(f"Ray {figures['ray']}, {figures['cpus']} CPUs, warm, median of {args.repeat} rounds.\n")
    print(
        f"- private Ray start (stepdown's ray rung, first run): {figures['ray_start']:.2f} s; "
        f"shut down: {figures['ray_stop']:.2f} s"
    )
    print(f"- ray.util.multiprocessing.Pool(2) start on it: {figures['pool_start']:.2f} s\n")
    print("| workload | stepdown ray:2 | raw tasks | Ray Pool | stepdown / peer | target |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        label = f"{row['workload']}: {row['tasks']:,} x {row['task_cpu'] * 1e3:.3g} ms"
        cells = " | ".join(
            f"{row['wall'][p]:.2f} s ({row['per_task_us'][p]:.0f} us/task)"
            for p in ("stepdown ray:2", "raw tasks", "Ray Pool")
        )
        verdict = "met" if row["met"] else "MISSED"
        print(
            f"| {label} | {cells} | {row['ratio']:.3f}x {row['ratio_vs']} "
            f"| <= {row['target']}x: {verdict} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0 if all(row["met"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
