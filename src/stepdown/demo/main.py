"""``stepdown demo``: the main job. Score real ARC tasks against a few hundred candidate grid
programs through ``stepdown`` with the active policy, and show the plan, progress, the solved
count and the run report. ``--kill-a-worker`` kills one worker halfway to show the step down."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from ..api import start
from ..errors import UsageError
from ..options import Options
from ..runner.progress import progress_bar
from .arc import ArcDataMissing, TaskScore, load_tasks, score_task, summarize

__all__ = ["demo"]

log = logging.getLogger("stepdown")


def _kill_one_worker(engine: Any) -> str:
    backend = engine.backend
    pids = backend.worker_pids() if backend is not None else []
    if not pids:
        return f"--kill-a-worker: {backend.label if backend else 'no rung'} has no worker process"
    os.kill(pids[0], signal.SIGKILL)
    return f"--kill-a-worker: sent SIGKILL to worker {pids[0]} of {backend.label}"


def demo(
    tasks: int | None = None,
    profile: str | None = None,
    policy: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    kill_a_worker: bool = False,
    progress: bool | None = None,
) -> int:
    """Run the demo job; return the exit code."""
    if tasks is not None and tasks < 1:
        raise UsageError(f"--tasks must be at least 1, not {tasks}")
    try:
        arc = load_tasks(limit=tasks)
    except ArcDataMissing as exc:
        raise UsageError(str(exc)) from None
    engine = start(score_task, arc, Options(profile=profile, policy=policy))
    print(engine.plan.explain())
    print(
        f"\nscoring {len(arc)} ARC tasks (arc1 training set) against candidate programs\n",
        flush=True,
    )
    scores: list[TaskScore | None] = [None] * len(arc)
    bar = progress_bar(len(arc), progress, engine.report)
    started = time.perf_counter()
    killed = not kill_a_worker
    try:
        for done, (index, value, _ok) in enumerate(engine, 1):
            scores[index] = value
            if bar is not None:
                bar.update(1)
            if not killed and done >= len(arc) // 2:
                killed = True
                message = _kill_one_worker(engine)
                if bar is not None:
                    bar.write(message, file=sys.stderr)
                else:
                    print(message, file=sys.stderr, flush=True)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - started
    finished = [s for s in scores if s is not None]
    print(f"\n{summarize(finished)}")
    print(f"\nwall time {wall:.1f} s")
    print(f"\nreport: {engine.report}")
    return 0
