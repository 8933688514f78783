"""One instance whose tasks outgrow its container (issue scenario 2), side by side.

    sudo .venv/bin/python -m benchmarks.bench_memory [--tasks 6] [--mib 1000] [--limit 1.7GiB]
        [--before REV] [--reps 3]

Each variant runs in a fresh memory cgroup (``--limit``, no swap) as a new interpreter scoring
``--tasks`` items with ``tests/support/memtask.py``'s ``hold``: a task builds up ``--mib`` MiB
(every page written, 8 MiB at a time), holds it a moment and frees it. Two such tasks do not fit
beside the caller; one does. Variants:

sequential         a plain loop: one task at a time, the reference (and the target's base)
stepdown           ``stepdown.run(hold, items, ladder=["loky:2", "thread:2", "sequential"])``,
                   nothing declared
stepdown-before    the same with the code of ``--before`` (a git revision, checked out in a
                   temporary worktree), if given
joblib             ``joblib.Parallel(n_jobs=2)`` (loky), failures caught

The table: wall (median, range), whether every result came back, the kernel's OOM kills in the
group (``memory.oom_control``/``memory.events``), the caller's exit. Target: stepdown completes
with 0 OOM kills, wall <= 1.3x sequential. Needs root and a memory cgroup.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from benchmarks.bench_cold import worktree
from tests.support import cgroups

ROOT = Path(__file__).resolve().parent.parent

CODE = {
    "sequential": """
        from tests.support.memtask import hold
        results = [hold(item) for item in ITEMS]
    """,
    "stepdown": """
        import stepdown
        from tests.support.memtask import hold
        results = stepdown.run(hold, ITEMS, ladder=["loky:2", "thread:2", "sequential"]).results
    """,
    "joblib": """
        from joblib import Parallel, delayed
        from tests.support.memtask import hold
        results = Parallel(n_jobs=2)(delayed(hold)(item) for item in ITEMS)
    """,
}


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def run(variant: str, args: argparse.Namespace, src: str | None) -> dict[str, object]:
    body = CODE["stepdown" if variant == "stepdown-before" else variant]
    code = (
        textwrap.dedent(
            f"""
        import json, time
        ITEMS = [({args.mib}, i) for i in range({args.tasks})]
        began = time.perf_counter()
        """
        )
        + textwrap.dedent(body)
        + textwrap.dedent(
            """
        print(json.dumps({"ok": results == list(range(len(ITEMS))),
                          "wall": time.perf_counter() - began}))
        """
        )
    )
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [src, str(ROOT)]))}
    with cgroups.Cgroup("memory", name="bench-memory") as group:
        group.set_memory_limit(args.limit)
        began = time.perf_counter()
        try:
            done = group.run_python(code, timeout=args.timeout, env=env)
            returncode, out = done.returncode, done.stdout
        except subprocess.TimeoutExpired:
            returncode, out = None, ""
        wall = time.perf_counter() - began
        kills = group.oom_kills()
    last = out.strip().splitlines()[-1] if out.strip() else ""
    ok = '"ok": true' in last
    return {"wall": wall, "ok": ok, "kills": kills, "exit": returncode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--mib", type=int, default=1000)
    parser.add_argument("--limit", type=_size, default=_size("1.7GiB"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--before", help="a git revision to compare with (stepdown-before)")
    args = parser.parse_args(argv)
    problems = cgroups.missing(("memory",))
    if problems:
        print("cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2
    variants = ["sequential", "stepdown", "joblib"]
    if args.before:
        variants.insert(2, "stepdown-before")
    print(
        f"{args.tasks} tasks of {args.mib} MiB in a {args.limit / 2**30:.2f} GiB group, "
        f"{args.reps} runs each, interleaved",
        flush=True,
    )
    measured: dict[str, list[dict[str, object]]] = {v: [] for v in variants}
    with contextlib.ExitStack() as stack:
        tree = stack.enter_context(worktree(args.before)) if args.before else None
        for _ in range(args.reps):
            for variant in variants:
                before = tree is not None and variant == "stepdown-before"
                measured[variant].append(run(variant, args, str(tree / "src") if before else None))
    base = statistics.median(float(str(m["wall"])) for m in measured["sequential"])
    print("\n| variant | wall | vs sequential | all results | OOM kills | caller exit |")
    print("|---|---|---|---|---|---|")
    for variant, runs in measured.items():
        walls = [float(str(m["wall"])) for m in runs]
        median = statistics.median(walls)
        print(
            f"| {variant} | {median:.1f} s [{min(walls):.1f}-{max(walls):.1f}] "
            f"| {median / base:.2f}x | {sum(bool(m['ok']) for m in runs)} of {len(runs)} "
            f"| {', '.join(str(m['kills']) for m in runs)} "
            f"| {', '.join(str(m['exit']) for m in runs)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
