"""``Parallel(backend="stepdown")`` against ``Parallel(backend="loky")``: is the step-down free?

Two workloads of CPU-burning tasks: 10,000 tasks of 10 µs (scheduling overhead dominates) and
40 tasks of 50 ms (the work dominates). A task is a pure arithmetic loop whose length is
calibrated against ``time.process_time``, so it burns CPU instead of sleeping or watching a
clock. Each is timed warm (the median of three ``Parallel`` calls after a warm-up call in the
same process: pools already started) and cold (the first ``Parallel`` call of a fresh
interpreter, imports done before the clock starts: the pool's start-up is included); median of
``--repeat`` runs.

    python -m benchmarks.bench_joblib [--repeat 3] [--n-jobs 2] [--ladder loky:2]

Prints a markdown table; ratio = stepdown / loky (target: at most 1.05).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from stepdown.cli.bench import burn, calibrate

WORKLOADS = {"10,000 x 10 us": (10_000, 10e-6), "40 x 50 ms": (40, 50e-3)}


# The CPU-burning task and its calibration are stepdown bench's own, so every benchmark burns
# the same kind of work.
spin = burn


def one_call(backend: str, n_jobs: int, tasks: int, rounds: int, ladder: list[str] | None) -> float:
    from joblib import Parallel, delayed

    options = {"ladder": ladder} if backend == "stepdown" and ladder else {}
    began = time.perf_counter()
    Parallel(n_jobs=n_jobs, backend=backend, **options)(delayed(spin)(rounds) for _ in range(tasks))
    return time.perf_counter() - began


def warm(backend: str, n_jobs: int, tasks: int, rounds: int, ladder: list[str] | None) -> float:
    """The median of three calls after a warm-up call: warm calls are cheap to repeat, and on a
    shared machine one call alone is mostly the neighbours' load."""
    one_call(backend, n_jobs, tasks, rounds, ladder)
    return statistics.median(one_call(backend, n_jobs, tasks, rounds, ladder) for _ in range(3))


_COLD = """
import json, sys
import joblib
import stepdown.integrations.joblib
from benchmarks.bench_joblib import one_call
print(json.dumps(one_call({backend!r}, {n_jobs}, {tasks}, {rounds}, {ladder!r})))
"""


def cold(backend: str, n_jobs: int, tasks: int, rounds: int, ladder: list[str] | None) -> float:
    code = _COLD.format(
        backend=backend,
        n_jobs=n_jobs,
        tasks=tasks,
        rounds=rounds,
        ladder=ladder,
    )
    # From the repository, so that the child imports this module as benchmarks.bench_joblib.
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    seconds: float = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument(
        "--ladder", nargs="*", default=None, help="stepdown's ladder (default: the policy's)"
    )
    args = parser.parse_args()

    import joblib

    import stepdown.integrations.joblib  # noqa: F401  (registers "stepdown")
    from stepdown.planning.setup import plan

    ladder = args.ladder or None
    chosen = plan(ladder=ladder).usable_rungs()
    print(
        f"joblib {joblib.__version__}, {os.cpu_count()} CPUs, n_jobs={args.n_jobs}, "
        f"stepdown ladder: {' -> '.join(r.label() for r in chosen)}, "
        f"median of {args.repeat}\n"
    )
    print("| workload | start | loky (s) | stepdown (s) | ratio |")
    print("|---|---|---:|---:|---:|")
    for name, (tasks, seconds) in WORKLOADS.items():
        rounds = calibrate(seconds)
        for start, measure in (("warm", warm), ("cold", cold)):
            runs: dict[str, list[float]] = {"loky": [], "stepdown": []}
            for repeat in range(args.repeat):
                # Alternate the order: on a shared machine, load drifts between runs.
                for backend in sorted(runs, reverse=repeat % 2 == 1):
                    runs[backend].append(measure(backend, args.n_jobs, tasks, rounds, ladder))
            times = {backend: statistics.median(values) for backend, values in runs.items()}
            ratio = times["stepdown"] / times["loky"]
            print(
                f"| {name} | {start} | {times['loky']:.3f} | {times['stepdown']:.3f} "
                f"| {ratio:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
