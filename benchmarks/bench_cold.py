"""Cold scripts: every variant a whole new interpreter, as when a user runs ``python score.py``.

    .venv/bin/python -m benchmarks.bench_cold [--quick] [--reps 5] [--only seed,tiny,mid]
        [--variants loop,kaggle,auto,ppe,joblib] [--before REV] [--json PATH]

Each measurement is ``python -c CODE`` from the repository root; its wall time runs from just
before the process starts to its exit, so interpreter start, imports, pool start, teardown and
exit are all in it. Workloads (tasks burn CPU and hold the GIL; ``stepdown.cli.bench.calibrate``
sizes them once, in this process): seed, 6 x ~67 ms (the seed's own case); tiny, 10,000 x
~10 us; mid, 40 x ~50 ms. Variants:

loop     a plain for loop, the reference (1.00x)
kaggle   ``stepdown.map(spin, items, profile="kaggle")``
auto     ``stepdown.map(spin, items)``
ppe      ``with ProcessPoolExecutor(3) as ex: list(ex.map(spin, items))``
joblib   ``Parallel(n_jobs=3)(delayed(spin)(x) for x in items)``

With ``--before REV``, kaggle and auto also run on the code of REV (a temporary git worktree,
``PYTHONPATH=<worktree>/src``). Variants alternate within each round, and the order rotates from
one round to the next; medians and ranges over ``--reps`` rounds (5; 3 with ``--quick``).
"exit ms" runs from the child's ``time.time()`` just after the map returned to the process's
exit; "outlived ms" from that exit until the last process the child started has ended too;
"CPU pressure" the share of the wall time during which some task (this run's or another's)
waited for a CPU (Linux PSI, as in bench_core).
Every child's results are checked; a mismatch stops the run with ``BENCHMARK ABORTED``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stepdown.cli.bench import burn, calibrate

from benchmarks.bench_core import cpu_pressure, fail, summary
from benchmarks.coldtask import spin

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300.0
PR_SET_CHILD_SUBREAPER = 36

# name: (tasks, CPU seconds per task, what it is)
WORKLOADS = {
    "seed": (6, 0.067, "the seed's own case"),
    "tiny": (10_000, 10e-6, "per-task overhead dominates"),
    "mid": (40, 0.050, "enough work for 2 cores; the limit is 0.50x"),
}
# name: (target, aim) for the stepdown variants, from issue 11
TARGETS = {"seed": (0.60, 0.55), "tiny": (1.00, 0.80), "mid": (0.55, None)}


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    body: str
    src: Path | None = None  # another revision's src/, put first on the child's path

    @property
    def stepdown(self) -> bool:
        return self.key in ("kaggle", "auto")


VARIANTS = [
    Variant("loop", "loop", "results = [spin(item) for item in ITEMS]"),
    Variant(
        "kaggle",
        "stepdown kaggle",
        'import stepdown\nresults = stepdown.map(spin, ITEMS, profile="kaggle")',
    ),
    Variant("auto", "stepdown auto", "import stepdown\nresults = stepdown.map(spin, ITEMS)"),
    Variant(
        "ppe",
        "ProcessPoolExecutor(3)",
        "from concurrent.futures import ProcessPoolExecutor\n"
        "with ProcessPoolExecutor(3) as ex:\n"
        "    results = list(ex.map(spin, ITEMS))",
    ),
    Variant(
        "joblib",
        "joblib.Parallel(n_jobs=3)",
        "from joblib import Parallel, delayed\n"
        "results = Parallel(n_jobs=3)(delayed(spin)(item) for item in ITEMS)",
    ),
]

_CHILD = """\
import json
import sys
import time

from benchmarks.coldtask import spin

ITEMS = [({rounds}, seed) for seed in range({tasks})]

if __name__ == "__main__":
{body}
    returned = time.time()
    print(json.dumps({{
        "returned": returned,
        "check": [len(results), sum(k * r for k, r in enumerate(results, 1))],
        "stepdown": getattr(sys.modules.get("stepdown"), "__file__", None),
    }}))
"""


@dataclass(frozen=True)
class Sample:
    wall: float
    exit: float
    outlived: float | None  # None where the OS cannot tell (not Linux)
    pressure: float | None  # share of the wall time some task waited for a CPU (Linux PSI)


def checksum(rounds: int, tasks: int) -> list[int]:
    """What every child must print as its ``check``: the loop's, computed here."""
    results = [spin((rounds, seed)) for seed in range(tasks)]
    return [len(results), sum(k * r for k, r in enumerate(results, 1))]


def adopt_orphans() -> bool:
    """Make this process the subreaper of its descendants (Linux), to see what outlives a child.

    A pool's worker or tracker that outlives the script is reparented to us rather than to
    init, so ``wait_for_orphans`` can tell how long it stayed.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def wait_for_orphans(variant: Variant) -> float:
    """Seconds until every process the last child left behind has exited."""
    began = time.perf_counter()
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return time.perf_counter() - began
        if pid == 0:
            if time.perf_counter() - began > TIMEOUT:
                fail(f"{variant.label}: processes it started still run {TIMEOUT:.0f} s later")
            time.sleep(0.002)


def run_child(
    variant: Variant,
    rounds: int,
    tasks: int,
    expected: list[int],
    orphans: bool,
    runtime: Path,
) -> Sample:
    code = _CHILD.format(rounds=rounds, tasks=tasks, body=textwrap.indent(variant.body, " " * 4))
    # Bytecode caches written and used, as on a user's machine (a shell that sets
    # PYTHONDONTWRITEBYTECODE would make every import compile its source again).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # What stepdown learns (start-up costs, what a task took) stays in this runtime directory.
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(runtime)
    if variant.src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(variant.src), env.get("PYTHONPATH")]))
    # Files, not pipes: with a pipe, run() would also wait for every worker that inherited it,
    # whereas the user's shell returns when the script's own process exits.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        stalled = cpu_pressure()
        began = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=out, stderr=err
        )
        # A blocking wait, the timeout kept by a timer: Popen.wait(timeout) polls every 50 ms,
        # which rounds every wall time up to the next poll (before: every figure in steps of
        # 50 ms, the loop's included).
        late = threading.Timer(TIMEOUT, child.kill)
        late.start()
        returncode = child.wait()
        wall = time.perf_counter() - began
        late.cancel()
        if late.finished.is_set() and returncode < 0:
            fail(f"{variant.label}: no exit within {TIMEOUT:.0f} s")
        exited = time.time()
        stalled_after = cpu_pressure()
        outlived = wait_for_orphans(variant) if orphans else None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if returncode != 0:
        fail(f"{variant.label} exited with {returncode}:\n{stderr[-2000:]}")
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        fail(f"{variant.label} printed no result line:\n{stdout[-500:]}{stderr[-1500:]}")
    if report["check"] != expected:
        fail(f"{variant.label}: results {report['check']} (count, checksum), expected {expected}")
    where = report["stepdown"]
    if variant.stepdown:
        tree = variant.src if variant.src is not None else ROOT / "src"
        if where is None or not Path(where).resolve().is_relative_to(tree.resolve()):
            fail(f"{variant.label} imported stepdown from {where}, not from {tree}")
    elif where is not None:
        fail(f"{variant.label} imported stepdown ({where}); a peer must not pay for it")
    pressure = None
    if stalled is not None and stalled_after is not None:
        pressure = (stalled_after - stalled) / wall
    return Sample(wall, exited - float(report["returned"]), outlived, pressure)


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out in a temporary git worktree, removed (and pruned) afterwards."""
    path = tempfile.mkdtemp(prefix="stepdown-before-")
    git = ["git", "-C", str(ROOT), "worktree"]
    added = subprocess.run([*git, "add", "-f", path, rev], capture_output=True, text=True)
    if added.returncode != 0:
        os.rmdir(path)
        fail(f"--before {rev}: git worktree add failed: {added.stderr.strip()}")
    try:
        yield Path(path)
    finally:
        subprocess.run([*git, "remove", "--force", path], capture_output=True)
        subprocess.run([*git, "prune"], capture_output=True)


def spread(values: list[float], scale: float, digits: int) -> str:
    """``median [min-max]`` of ``values`` times ``scale``."""
    m, lo, hi = (scale * v for v in (statistics.median(values), min(values), max(values)))
    return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def table(name: str, rounds: int, reps: int, samples: dict[str, list[Sample]]) -> str:
    tasks, seconds, what = WORKLOADS[name]
    base = statistics.median(s.wall for s in samples["loop"])
    size = f"{seconds * 1e3:.0f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"
    lines = [
        f"### {name}: {tasks:,} tasks x ~{size} CPU ({what})",
        "",
        f"{rounds:,} iterations per task; medians of {reps} rounds, [min-max].",
        "",
        "| variant | wall (s) | vs loop | exit ms | outlived ms | CPU pressure |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, runs in samples.items():
        walls = [s.wall for s in runs]
        outlived = [s.outlived for s in runs if s.outlived is not None]
        pressures = [s.pressure for s in runs if s.pressure is not None]
        lines.append(
            f"| {label} | {spread(walls, 1, 3)} | {statistics.median(walls) / base:.2f}x "
            f"| {spread([s.exit for s in runs], 1e3, 0)} "
            f"| {spread(outlived, 1e3, 0) if outlived else 'n/a'} "
            f"| {f'{statistics.median(pressures):.0%}' if pressures else 'n/a'} |"
        )
    return "\n".join(lines)


def target_lines(name: str, samples: dict[str, list[Sample]]) -> list[tuple[bool, str]]:
    target, aim = TARGETS[name]
    base = statistics.median(s.wall for s in samples["loop"])
    lines = []
    for variant in VARIANTS:
        if not variant.stepdown or variant.label not in samples:
            continue
        wall = statistics.median(s.wall for s in samples[variant.label])
        ratio = wall / base
        goal = f"target <= {target:.2f}x" + (
            f", aim {aim:.2f}x ({'met' if ratio <= aim else 'not met'})" if aim else ""
        )
        lines.append(
            (
                ratio <= target,
                f"{name:<4} {variant.label}: {wall:.3f} s = {ratio:.2f}x the loop "
                f"({base:.3f} s); {goal}",
            )
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    parser.add_argument("--reps", type=int, default=None, help="rounds (default 5)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="subset of seed,tiny,mid")
    parser.add_argument(
        "--variants",
        default=",".join(v.key for v in VARIANTS),
        help="subset of loop,kaggle,auto,ppe,joblib (loop, the reference, always runs)",
    )
    parser.add_argument("--before", metavar="REV", help="also run kaggle and auto at REV")
    parser.add_argument("--json", metavar="PATH", help="dump the raw numbers to PATH")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    keys = {"loop"} | {k.strip() for k in args.variants.split(",") if k.strip()}
    unknown = [w for w in only if w not in WORKLOADS] + sorted(keys - {v.key for v in VARIANTS})
    if unknown:
        parser.error(f"unknown workload or variant: {', '.join(unknown)}")
    # Same loop, or the calibration below would size some other task.
    if spin((10_000, 0)) != burn(10_000):
        fail("benchmarks/coldtask.py's spin no longer runs stepdown.cli.bench.burn's loop")

    began = time.perf_counter()
    load = os.getloadavg()
    orphans = adopt_orphans()
    chosen = [v for v in VARIANTS if v.key in keys]
    with contextlib.ExitStack() as stack:
        if args.before:
            tree = stack.enter_context(worktree(args.before))
            chosen += [
                Variant(v.key, f"{v.label} @{args.before}", v.body, tree / "src")
                for v in chosen
                if v.stepdown
            ]
        print(
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
            f"{load[0]:.2f}; {reps} rounds; variants: {', '.join(v.label for v in chosen)}",
            flush=True,
        )
        rounds = {name: calibrate(WORKLOADS[name][1]) for name in only}
        expected = {name: checksum(rounds[name], WORKLOADS[name][0]) for name in only}
        # Untimed: every variant works before anything is timed, and the worktree's bytecode
        # is compiled.
        # In a runtime directory of its own: its short tasks teach nothing to the runs timed.
        # Each variant's timed runs share one per workload: the first is a script's first run,
        # the others run it again, as a user does, with what the first learned.
        runtimes = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cold-")))
        warm_rounds = calibrate(1e-3)
        for variant in chosen:
            warm = runtimes / "warm-up"
            run_child(variant, warm_rounds, 4, checksum(warm_rounds, 4), orphans, warm)
        measured: dict[str, dict[str, list[Sample]]] = {}
        for name in only:
            samples: dict[str, list[Sample]] = {v.label: [] for v in chosen}
            for rep in range(reps):
                # Rotate the order: on a shared machine, load drifts within a round.
                turn = rep % len(chosen)
                for variant in chosen[turn:] + chosen[:turn]:
                    samples[variant.label].append(
                        run_child(
                            variant,
                            rounds[name],
                            WORKLOADS[name][0],
                            expected[name],
                            orphans,
                            runtimes / f"{name}-{chosen.index(variant)}",
                        )
                    )
                print(f"  {name} round {rep + 1}/{reps} done", flush=True)
            measured[name] = samples

    texts = [table(name, rounds[name], reps, measured[name]) for name in only]
    targets = [line for name in only for line in target_lines(name, measured[name])]
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "reps": reps,
        "before": args.before,
        "load_average": load,
        "workloads": {
            name: {
                "tasks": WORKLOADS[name][0],
                "task_seconds": WORKLOADS[name][1],
                "rounds": rounds[name],
                "variants": {
                    label: [asdict(s) for s in runs] for label, runs in measured[name].items()
                },
            }
            for name in only
        },
    }
    summary(out, texts, targets, began, load, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
