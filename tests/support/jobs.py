"""A memory-hungry scoring job, for several instances started together on one host.

Used by ``tests/test_multi_instance.py`` and ``benchmarks/bench_multi_instance.py``; run it as
``python -m tests.support.jobs --mode stepdown-budget`` from the repository. It prints exactly
one JSON line on stdout::

    {"mode": ..., "instance": ..., "pid": ..., "ok": true, "results": [...], "wall": 3.1,
     "cpu": 2.9, "started": <epoch>, "ended": <epoch>, "report": {...} | null,
     "failures": [...], "error": null}

Modes:

``stepdown-budget``    ``stepdown.run(score, items, profile="kaggle", task_memory=...)`` with
                       ``STEPDOWN_BUDGET=on`` (the kaggle profile has it on anyway)
``stepdown-wait``      the kaggle profile with ``on_exhausted = "wait"`` (given as a policy
                       dict, see :data:`WAIT_POLICY`): an instance that finds the budget full
                       waits for slots instead of stepping down to its guaranteed slot
``stepdown-nobudget``  the same as ``stepdown-budget`` with ``STEPDOWN_BUDGET=off``: every
                       instance plans alone
``stepdown-undeclared`` a user's own profile that declares nothing (see :data:`OWN_POLICY`:
                       no budget table, no task memory), ``STEPDOWN_BUDGET`` left unset
``joblib``             ``joblib.Parallel(n_jobs=3)`` with its default loky backend, as a user
                       would write it; a failure is caught, counted and reported (joblib's
                       list mode keeps no partial result, so the instance has none)
``sequential``         a plain loop, for reference

Log lines of the ``stepdown`` logger (INFO and up) go to stderr, prefixed with the instance.
Nothing but the standard library is imported at module level, so a worker that unpickles
:func:`score` by reference pays for nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import mmap
import os
import sys
import time
from functools import partial
from typing import Any

MIB = 1 << 20
PAGE = mmap.PAGESIZE

MODES = (
    "stepdown-budget",
    "stepdown-wait",
    "stepdown-nobudget",
    "stepdown-undeclared",
    "joblib",
    "sequential",
)
DEFAULT_TASKS = 12
DEFAULT_MIB = 200
DEFAULT_ROUNDS = 2
JOBLIB_WORKERS = 3

# The built-in kaggle profile, word for word, with instances that wait for the budget instead
# of stepping down past it (a user's profile of the same name replaces the built-in one whole).
WAIT_POLICY: dict[str, Any] = {
    "profiles": {
        "kaggle": {
            "description": "kaggle, waiting for the host budget",
            "memory_per_worker": "auto",
            "memory_headroom": "25%",
            "rules": [
                {"when": {"tasks_below": 4}, "ladder": ["thread:3", "sequential"]},
                {"ladder": ["loky:3", "thread:2", "sequential"]},
            ],
            "budget": {"enabled": True, "on_exhausted": "wait", "wait": 300},
        }
    }
}


# A user's own profile as one would write it: a ladder, nothing declared about memory or a
# budget.
OWN_POLICY: dict[str, Any] = {
    "profiles": {"mine": {"rules": [{"ladder": ["loky:3", "thread:2", "sequential"]}]}}
}


def score(index: int, mib: int = DEFAULT_MIB, rounds: int = DEFAULT_ROUNDS) -> str:
    """Hold ``mib`` MiB (every page written), hash it ``rounds`` times; a checksum of ``index``.

    About 0.35 s of CPU with the defaults on the development machine (2 x AMD EPYC, SHA-NI):
    ~0.1 s to fault in and fill the pages, ~0.12 s per SHA-256 pass over 200 MiB. The result
    depends only on the arguments, so any executor, in any process, gives the same string.
    """
    size = mib * MIB
    buf = bytearray(size)  # calloc'd by mmap: nothing is resident until written
    buf[::PAGE] = hashlib.shake_128(b"stepdown-%d" % index).digest(size // PAGE)
    digest = hashlib.sha256()
    for _ in range(rounds):
        digest.update(buf)
    return f"{index}:{digest.hexdigest()[:16]}"


def expected(tasks: int, mib: int = DEFAULT_MIB, rounds: int = DEFAULT_ROUNDS) -> list[str]:
    """The results, computed one after the other in this process."""
    return [score(i, mib, rounds) for i in range(tasks)]


def _summary(report: Any) -> dict[str, Any]:
    rungs = [
        {
            "label": r.label,
            "backend": r.backend,
            "workers": r.workers,
            "slots": r.slots,
            "skipped": r.skipped,
            "failure": r.failure,
            "reason": r.reason,
            "finished": r.finished,
            "requeued": r.requeued,
            "wall": round(r.wall, 3),
        }
        for r in report.rungs
    ]
    return {
        "rungs": rungs,
        "final_rung": report.final_rung,
        "rerun": report.rerun,
        "isolated": report.isolated,
        "crashed": list(report.crashed),
        "wall": round(report.wall, 3),
        "text": str(report),
    }


def _log_to_stderr(instance: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s [{instance} pid %(process)d] %(levelname)s %(message)s")
    )
    logger = logging.getLogger("stepdown")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _run_stepdown(
    fn: Any, tasks: int, mib: int, mode: str, declare: bool, out: dict[str, Any]
) -> None:
    import stepdown

    if mode == "stepdown-undeclared":
        run = stepdown.run(fn, range(tasks), profile="mine", policy=OWN_POLICY)
    else:
        os.environ["STEPDOWN_BUDGET"] = "off" if mode == "stepdown-nobudget" else "on"
        run = stepdown.run(
            fn,
            range(tasks),
            profile="kaggle",
            policy=WAIT_POLICY if mode == "stepdown-wait" else None,
            task_memory=f"{mib}MiB" if declare else None,
        )
    out["results"] = run.results
    out["report"] = _summary(run.report)
    out["failures"] = [
        {"rung": r.label, "reason": r.reason, "failure": r.failure}
        for r in run.report.rungs
        if r.failure is not None and r.skipped is None
    ]
    out["ok"] = True


def _run_joblib(fn: Any, tasks: int, out: dict[str, Any]) -> None:
    from concurrent.futures.process import BrokenProcessPool

    import joblib

    try:
        out["results"] = joblib.Parallel(n_jobs=JOBLIB_WORKERS)(
            joblib.delayed(fn)(i) for i in range(tasks)
        )
        out["ok"] = True
    except (BrokenProcessPool, OSError, MemoryError, RuntimeError) as exc:
        # BrokenProcessPool covers loky's and joblib's vendored TerminatedWorkerError (an OOM
        # kill); OSError a refused fork; RuntimeError a thread that could not start.
        out["failures"].append({"type": type(exc).__name__, "message": str(exc)[:300]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, default="stepdown-budget")
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS)
    parser.add_argument("--mib", type=int, default=DEFAULT_MIB, help="memory a task holds")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="SHA-256 passes")
    parser.add_argument("--instance", default="0", help="a name for the log lines and output")
    parser.add_argument(
        "--no-declare", action="store_true", help="stepdown: do not pass task_memory"
    )
    args = parser.parse_args(argv)
    _log_to_stderr(args.instance)
    fn = partial(score, mib=args.mib, rounds=args.rounds)
    out: dict[str, Any] = {
        "mode": args.mode,
        "instance": args.instance,
        "pid": os.getpid(),
        "ok": False,
        "results": None,
        "report": None,
        "failures": [],
        "error": None,
        "started": time.time(),
    }
    wall = time.perf_counter()
    cpu = time.process_time()
    try:
        if args.mode == "sequential":
            out["results"] = [fn(i) for i in range(args.tasks)]
            out["ok"] = True
        elif args.mode == "joblib":
            _run_joblib(fn, args.tasks, out)
        else:
            _run_stepdown(fn, args.tasks, args.mib, args.mode, not args.no_declare, out)
    except Exception as exc:  # reported, not raised: the caller reads one JSON line
        out["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    out["wall"] = round(time.perf_counter() - wall, 3)
    out["cpu"] = round(time.process_time() - cpu, 3)  # this process only, not its workers
    out["ended"] = time.time()
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


# ---- starting several instances (the test and the benchmark use these) ----------------------


class Instance:
    """One job process started by :func:`start_instances`, and what it printed."""

    def __init__(self, name: str, process: Any) -> None:
        self.name = name
        self.process = process
        self.returncode: int | None = None
        self.stdout = ""
        self.stderr = ""
        self.output: dict[str, Any] | None = None
        self.ended: float | None = None
        self.timed_out = False

    @property
    def completed(self) -> bool:
        """Exited cleanly and printed results."""
        return self.returncode == 0 and self.output is not None and bool(self.output["ok"])

    def describe(self) -> str:
        """One line: how the instance ended and, for stepdown, the rungs it climbed."""
        hung = ", hung: killed at the timeout" if self.timed_out else ""
        if self.output is None:
            return f"instance {self.name}: exit {self.returncode}{hung}, no output"
        report = self.output.get("report")
        rungs = ""
        if report:
            parts = []
            for r in report["rungs"]:
                text = r["label"]
                if r["slots"]:
                    text += f" [{r['slots']}]"
                if r["skipped"]:
                    text += " skipped"
                elif r["failure"]:
                    text += f" failed ({r['reason']}) after {r['finished']}"
                else:
                    text += f" finished {r['finished']}"
                parts.append(text)
            rungs = "; " + " -> ".join(parts)
        failures = ""
        if self.output["failures"]:
            kinds = sorted(
                {f.get("type") or f.get("reason") or "?" for f in self.output["failures"]}
            )
            failures = f", {len(self.output['failures'])} failure(s) ({', '.join(kinds)})"
        error = f", error {self.output['error']}" if self.output["error"] else ""
        return (
            f"instance {self.name}: exit {self.returncode}{hung}, wall {self.output['wall']:.1f} s"
            f"{failures}{error}{rungs}"
        )


def start_instances(
    group: Any,
    mode: str,
    count: int,
    *,
    tasks: int = DEFAULT_TASKS,
    mib: int = DEFAULT_MIB,
    rounds: int = DEFAULT_ROUNDS,
    env: dict[str, str] | None = None,
) -> list[Instance]:
    """Start ``count`` instances of this job inside ``group`` (a ``Cgroup``), back to back.

    ``env`` is laid over ``child_env()`` (which puts the repository on ``PYTHONPATH``): give
    every instance the same private ``XDG_RUNTIME_DIR`` and they share one host budget.
    """
    import subprocess

    from .cgroups import child_env

    merged = child_env(env)
    instances = []
    for k in range(count):
        args = [
            sys.executable, "-m", "tests.support.jobs", "--mode", mode, "--tasks", str(tasks),
            "--mib", str(mib), "--rounds", str(rounds), "--instance", f"i{k}",
        ]  # fmt: skip
        process = group.popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=merged,
        )
        instances.append(Instance(f"i{k}", process))
    return instances


def wait_instances(group: Any, instances: list[Instance], timeout: float) -> float:
    """Wait for every instance, reading its output as it goes; return when the last one ended.

    An instance still running at ``timeout`` gets SIGABRT (its threads' stacks go to its
    stderr), then is SIGKILLed with everything else in the group; it counts as not completed
    and the returned time is then the moment it was given up. Pool workers that hold a pipe
    open after their instance exited get 2 s, then are killed too.
    """
    import contextlib
    import selectors
    import signal
    import subprocess

    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    chunks: dict[int, list[bytes]] = {}
    for instance in instances:
        for stream in (instance.process.stdout, instance.process.stderr):
            selector.register(stream.fileno(), selectors.EVENT_READ)
            chunks[stream.fileno()] = []
    open_fds = set(chunks)
    last_end = time.time()
    all_exited: float | None = None
    while open_fds:
        now = time.monotonic()
        if now > deadline or (all_exited is not None and now - all_exited > 2.0):
            break
        for key, _ in selector.select(timeout=0.05):
            data = os.read(key.fd, 1 << 16)
            if data:
                chunks[key.fd].append(data)
            else:
                selector.unregister(key.fd)
                open_fds.discard(key.fd)
        for instance in instances:
            if instance.returncode is None and instance.process.poll() is not None:
                instance.returncode = instance.process.returncode
                instance.ended = last_end = time.time()
        if all_exited is None and all(i.returncode is not None for i in instances):
            all_exited = time.monotonic()
    selector.close()
    for instance in instances:
        if instance.returncode is None:
            # Its output closed: it is exiting. Give it what is left of the timeout.
            with contextlib.suppress(subprocess.TimeoutExpired):
                instance.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                instance.returncode = instance.process.returncode
                instance.ended = last_end = max(last_end, time.time())
    hung = [i for i in instances if i.returncode is None]
    for instance in hung:
        # PYTHONFAULTHANDLER (set by child_env) prints every thread's stack on SIGABRT.
        instance.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            instance.process.send_signal(signal.SIGABRT)
    if hung:
        last_end = time.time()
        with contextlib.suppress(subprocess.TimeoutExpired):
            for instance in hung:
                instance.process.wait(timeout=2)
        for fd in list(open_fds):
            with contextlib.suppress(OSError):
                os.set_blocking(fd, False)
                while data := os.read(fd, 1 << 16):
                    chunks[fd].append(data)
    if open_fds or hung:
        group.kill()
    for instance in instances:
        if instance.returncode is None:
            instance.process.wait(timeout=10)
            instance.returncode = instance.process.returncode
        out, err = instance.process.stdout, instance.process.stderr
        instance.stdout = b"".join(chunks[out.fileno()]).decode(errors="replace")
        instance.stderr = b"".join(chunks[err.fileno()]).decode(errors="replace")
        out.close()
        err.close()
        for line in instance.stdout.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    instance.output = json.loads(line)
    return last_end


if __name__ == "__main__":
    sys.exit(main())
