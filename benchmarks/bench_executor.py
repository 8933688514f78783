"""``stepdown.Executor`` as a drop-in for ``concurrent.futures.ProcessPoolExecutor``.

    .venv/bin/python -m benchmarks.bench_executor [--quick] [--json PATH] [--only tiny,timeout]

Sections (2 workers everywhere; the helpers, ``burn`` and its calibration come from
``benchmarks.bench_core``):

tiny      5,000 and 10,000 calls of ``square`` (``x * x``: no work, so the cost is the
          executor's own: submitting, chunking, IPC, bookkeeping). Peers, all with
          ``chunksize=500``:
          - ``ProcessPoolExecutor(2)`` (fork, the stdlib default on Linux): the reference;
          - ``stepdown.Executor(2, ladder=[rung]).map(square, xs, chunksize=500)`` with the rung
            ``process:2`` (``start_method="fork"``) and ``loky:2``;
          - ``stepdown.map(square, xs, ladder=[rung])`` (adaptive batching, no chunksize);
          - a raw ``loky.ProcessPoolExecutor(2)``: loky starts its workers with fork+exec,
            which costs more than the stdlib's fork, so the stepdown loky rows are judged
            against it;
          - mpire and pebble, only if they are importable (not installed: the row says so).
          Target: every stepdown row <= 1.2x its reference (the stdlib; raw loky for the loky
          rows) in the same start mode.
timeout   bench_core's workload B (40 tasks of ~50 ms CPU) through
          ``stepdown.map(..., ladder=["loky:2"])``, with and without ``task_timeout=60`` (never
          hit). Target: with / without <= 1.03.

"cold" times the executor's start and shutdown too (``with Executor(2) as ex:
list(ex.map(...))``; stepdown with ``reuse=False``); "warm" uses an executor (or stepdown's warm
pool, ``reuse=True``) started and exercised before the timing. Every measurement is repeated
(5 times, 2 with ``--quick``) and the median reported; the peers are interleaved and their order
rotated from one repetition to the next. Before measuring, every peer runs once untimed on a
few items: a peer that fails there is left out and its row shows the error.

Task functions are imported from this file as the module ``benchmarks.bench_executor`` (not
``__main__``) so that every peer pickles them by reference, as it would a library function.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

from benchmarks.bench_core import (
    B_SECONDS,
    B_TASKS,
    COLD,
    WARM,
    WORKERS,
    Peer,
    Sample,
    burn,
    calibrate,
    executor_peer,
    fail,
    iterations_for,
    measure_workload,
    summary,
)

TINY_SIZES = (5_000, 10_000)
CHUNKSIZE = 500
TIMEOUT = 60.0
TINY_TARGET, TIMEOUT_TARGET = 1.2, 1.03
STDLIB = "stdlib ProcessPoolExecutor(2) fork"
RAW_LOKY = "raw loky.ProcessPoolExecutor(2)"
NO_TIMEOUT = "stepdown.map loky:2"


def square(x: int) -> int:
    """The tiny task: no work at all."""
    return x * x


# ---- peers (the same shape as bench_core's: prepare untimed, run timed, finish untimed) ---


def map_peer(name: str, ladder: list[Any], **extra: Any) -> Peer:
    """``stepdown.map``: cold with ``reuse=False``, warm on the pool a 4-task call left."""
    import stepdown

    def prepare(mode: str, fn: Callable[[int], Any]) -> None:
        if mode == WARM:
            stepdown.map(fn, range(4), ladder=ladder, **extra)

    def run(ctx: Any, mode: str, fn: Callable[[int], Any], items: Sequence[int], _c: int) -> Any:
        return stepdown.map(fn, items, ladder=ladder, reuse=mode != COLD, **extra)

    return Peer(name, (COLD, WARM), prepare, run)


def tiny_peers() -> tuple[list[Peer], dict[str, str]]:
    """The peers of ``tiny`` (the stdlib first: the reference), and those not installed."""
    import loky

    import stepdown

    fork = multiprocessing.get_context("fork")
    fork_rung = {"backend": "process", "workers": WORKERS, "start_method": "fork"}
    ladders = {"process:2 (fork)": [fork_rung], "loky:2": [f"loky:{WORKERS}"]}
    peers = [
        executor_peer(STDLIB, lambda: ProcessPoolExecutor(WORKERS, mp_context=fork), (COLD, WARM))
    ]
    # The reference of the loky rows (a fork+exec start costs more than a fork).
    peers.append(executor_peer(RAW_LOKY, lambda: loky.ProcessPoolExecutor(WORKERS), (COLD, WARM)))
    for label, ladder in ladders.items():
        peers.append(
            executor_peer(
                f"stepdown.Executor(2) {label}",
                partial(stepdown.Executor, WORKERS, ladder=ladder, reuse=False),
                (COLD, WARM),
            )
        )
    peers += [map_peer(f"stepdown.map {label}", ladder) for label, ladder in ladders.items()]
    missing: dict[str, str] = {}
    try:
        import mpire
    except ImportError:
        missing["mpire WorkerPool(2) fork"] = "not installed"
    else:

        def run_mpire(ctx: Any, mode: str, fn: Any, items: Sequence[int], chunk: int) -> Any:
            with mpire.WorkerPool(n_jobs=WORKERS, start_method="fork") as pool:
                return pool.map(fn, items, chunk_size=chunk)

        peers.append(Peer("mpire WorkerPool(2) fork", (COLD,), lambda m, f: None, run_mpire))
    try:
        import pebble
    except ImportError:
        missing["pebble ProcessPool(2)"] = "not installed"
    else:

        def run_pebble(ctx: Any, mode: str, fn: Any, items: Sequence[int], chunk: int) -> Any:
            with pebble.ProcessPool(max_workers=WORKERS) as pool:
                return list(pool.map(fn, items, chunksize=chunk).result())

        peers.append(Peer("pebble ProcessPool(2)", (COLD,), lambda m, f: None, run_pebble))
    return peers, missing


def smoke(peers: list[Peer], fn: Callable[[int], Any], broken: dict[str, str]) -> list[Peer]:
    """One untimed call per peer and mode on 8 items (imports done, trackers running, and the
    errors of a half-built API found here); the peers that fail go to ``broken``."""
    working = []
    want = [fn(i) for i in range(8)]
    for peer in peers:
        try:
            for mode in peer.modes:
                ctx = peer.prepare(mode, fn)
                try:
                    got = list(peer.run(ctx, mode, fn, range(8), 2))
                finally:
                    peer.finish(ctx)
                if got != want:
                    raise AssertionError(f"returned {got!r}, not {want!r}")
        except Exception as exc:
            kind = type(exc).__qualname__
            if type(exc).__module__ != "builtins":
                kind = f"{type(exc).__module__}.{kind}"
            broken[peer.name] = f"error: {kind}: {str(exc)[:140]}"
            print(f"  {peer.name}: {broken[peer.name]}", flush=True)
        else:
            working.append(peer)
    return working


def measure(
    label: str,
    peers: list[Peer],
    fn: Callable[[int], Any],
    count: int,
    reps: int,
    fixed: int,
) -> dict[tuple[str, str], Sample]:
    """bench_core's ``measure_workload``, one repetition at a time: the first ``fixed`` peers
    stay first, the others are rotated by one peer per repetition; results checked across
    repetitions as well as within one."""
    samples: dict[tuple[str, str], Sample] = {}
    reference: list[Any] | None = None
    for rep in range(reps):
        rest = peers[fixed:]
        shift = rep % len(rest) if rest else 0
        order = [*peers[:fixed], *rest[shift:], *rest[:shift]]
        got, expected = measure_workload(
            f"{label} {rep + 1}/{reps}", order, fn, range(count), CHUNKSIZE, 1
        )
        if reference is None:
            reference = expected
        elif expected != reference:
            fail(f"{label}: repetition {rep + 1} returned other results than repetition 1")
        for key, sample in got.items():
            mine = samples.setdefault(key, Sample(*key))
            mine.walls += sample.walls
            mine.pressure += sample.pressure
    return samples


# ---- output -------------------------------------------------------------------------------


def rows_for(
    workload: str,
    samples: dict[tuple[str, str], Sample],
    reference: str,
    broken: dict[str, str],
    loky: str | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Markdown rows: every sample with its ratio to ``reference`` in the same mode, and the
    loky rows' ratio to the peer ``loky`` too, if given (an extra column)."""
    lines, raw = [], {}
    for (peer, mode), s in samples.items():
        ref = samples.get((reference, mode))
        ratio = s.median / ref.median if ref else None
        shown = "n/a" if ratio is None else f"{ratio:.2f}"
        if loky is not None:
            base = samples.get((loky, mode))
            extra = f"{s.median / base.median:.2f}" if base and "loky" in peer else ""
            shown += f" | {extra}"
        pressure = f"{100 * statistics.median(s.pressure):.0f}%" if s.pressure else "n/a"
        lines.append(
            f"| {workload} | {peer} | {mode} | {s.median:.3f} | {shown} "
            f"| {min(s.walls):.3f}-{max(s.walls):.3f} | {pressure} |"
        )
        row: dict[str, Any] = {"walls": s.walls, "median": s.median, "ratio": ratio}
        if loky is not None and "loky" in peer and peer != loky:
            base = samples.get((loky, mode))
            # Judged against a pool that starts its workers the same way (fork+exec).
            if base:
                row.update(ratio=s.median / base.median, ref="raw loky", stdlib=ratio)
        raw[f"{peer} [{mode}]"] = row
    for peer, why in broken.items():
        lines.append(f"| {workload} | {peer} | - | {why} | |{' |' if loky else ''} | |")
        raw[peer] = {"error": why}
    return lines, raw


def header(title: str, note: str, ratios: list[str]) -> list[str]:
    return [
        f"### {title}",
        "",
        note,
        "",
        "| workload | peer | start | seconds | " + " | ".join(ratios) + " | min-max (s) "
        "| CPU pressure |",
        "|---|---|---|---:|" + "---:|" * len(ratios) + "---:|---:|",
    ]


def check(
    raw: dict[str, Any], what: str, prefix: str, target: float, ref: str
) -> list[tuple[bool, str]]:
    out = []
    for key, row in raw.items():
        if not key.startswith(prefix):
            continue
        if "error" in row or row["ratio"] is None:
            out.append((False, f"{what}  {key}: {row.get('error', 'no reference')}"))
            continue
        ok = row["ratio"] <= target
        out.append(
            (
                ok,
                f"{what}  {key}: {row['median']:.3f} s = {row['ratio']:.2f}x "
                f"{row.get('ref', ref)}; "
                f"target <= {target}x",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions instead of 5")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5)")
    parser.add_argument("--json", metavar="PATH", help="dump the raw numbers to PATH")
    parser.add_argument("--only", default="tiny,timeout", help="a subset of tiny,timeout")
    args = parser.parse_args()
    reps = args.reps or (2 if args.quick else 5)
    only = {w.strip() for w in args.only.split(",")}
    logging.basicConfig(format="    (stepdown log) %(message)s", level=logging.WARNING)

    import stepdown
    from stepdown.runner import pools

    began = time.perf_counter()
    load = os.getloadavg()
    cpus = len(os.sched_getaffinity(0))
    print(
        f"stepdown {stepdown.__version__}, Python {platform.python_version()}, {cpus} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {reps} repetitions",
        flush=True,
    )
    out: dict[str, Any] = {"python": platform.python_version(), "cpus": cpus, "reps": reps}
    texts: list[str] = []
    targets: list[tuple[bool, str]] = []

    if "tiny" in only:
        peers, broken = tiny_peers()
        print("tiny: smoke test (untimed)...", flush=True)
        peers = smoke(peers, square, broken)
        if not peers or peers[0].name != STDLIB:
            fail("tiny: the stdlib reference did not run")
        lines = header(
            "Tiny tasks: stepdown.Executor against ProcessPoolExecutor",
            f"`x * x`; map(chunksize={CHUNKSIZE}) except stepdown.map (adaptive batches); "
            f"median of {reps}; ratios to the stdlib, and for the loky rows to a raw loky "
            f"pool (loky starts workers with fork+exec), in the same start mode; target <= "
            f"{TINY_TARGET}x the stdlib (the loky rows: x raw loky, the pool that starts its "
            "workers the same way).",
            ["ratio to stdlib", "ratio to raw loky"],
        )
        out["tiny"] = {}
        for count in TINY_SIZES:
            label = f"tiny {count:,}"
            print(f"{label}: {count} calls of square", flush=True)
            samples = measure(label, peers, square, count, reps, fixed=1)
            more, out["tiny"][label] = rows_for(label, samples, STDLIB, broken, RAW_LOKY)
            lines += more
            targets += check(out["tiny"][label], label, "stepdown", TINY_TARGET, "stdlib")
        texts.append("\n".join(lines))

    if "timeout" in only:
        per_iter = calibrate()
        n_b, cpu_b = iterations_for(B_SECONDS, per_iter, repeat=3)
        fn_b = partial(burn, n_b)
        print(f"timeout: B task {n_b} iterations = {cpu_b * 1e3:.1f} ms CPU", flush=True)
        ladder = [f"loky:{WORKERS}"]
        broken = {}
        peers = smoke(
            [
                map_peer(NO_TIMEOUT, ladder),
                map_peer(f"{NO_TIMEOUT} task_timeout={TIMEOUT:g}", ladder, task_timeout=TIMEOUT),
            ],
            partial(burn, 10),
            broken,
        )
        # Neither is fixed first: the two alternate from one repetition to the next.
        samples = measure("B", peers, fn_b, B_TASKS, reps, fixed=0)
        label = f"B {B_TASKS} x {cpu_b * 1e3:.0f} ms"
        lines = header(
            "The cost of task_timeout when it is never hit",
            f"bench_core's workload B via `stepdown.map(ladder=['loky:2'])`; median of {reps}; "
            f"ratio to the same call without task_timeout; target <= {TIMEOUT_TARGET}x.",
            ["ratio to no timeout"],
        )
        more, out["timeout"] = rows_for(label, samples, NO_TIMEOUT, broken)
        texts.append("\n".join(lines + more))
        targets += check(
            out["timeout"], "B", f"{NO_TIMEOUT} task_timeout", TIMEOUT_TARGET, "no timeout"
        )

    pools.shutdown_all()
    summary(out, texts, targets, began, load, args.json)
    sys.stdout.flush()


if __name__ == "__main__":
    # Run as the module ``benchmarks.bench_executor``, not ``__main__``: every peer then
    # pickles ``square`` by reference, and loky's workers import it from there.
    from benchmarks import bench_executor

    bench_executor.main()
