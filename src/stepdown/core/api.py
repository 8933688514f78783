"""The public entry points: ``run``, ``map``, ``imap``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from .engine import Engine, Settings
from .errors import UsageError
from .report import Report
from .rung import Rung

if TYPE_CHECKING:
    from .budget import Budget
    from .plan import Plan

__all__ = ["Results", "Run", "imap", "map", "run"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("stepdown")

Errors = Literal["raise", "return"]
MemoryErrors = Literal["step-down", "raise"]
LadderSpec = Sequence[str | Rung | dict[str, Any]]


@dataclass
class Run(Generic[R]):
    """A finished run: ``results`` in input order, and the ``report`` of what happened."""

    results: list[R]
    report: Report


def _resolve(
    ladder: LadderSpec | None,
    profile: str | None,
    policy: Any,
    tasks: int | None,
    task_memory: int | str | None = None,
) -> Plan:
    """The plan for this run: the policy's ladder (or ``ladder``) sized to this machine."""
    from .plan import plan

    chosen = plan(
        tasks=tasks, profile=profile, policy=policy, ladder=ladder, task_memory=task_memory
    )
    log.info(
        "plan: profile %s (%s), %s: %s",
        chosen.profile,
        chosen.profile_source,
        chosen.rule.label,
        " → ".join(r.label for r in chosen.rungs if not r.skipped),
    )
    for planned in chosen.rungs:
        if planned.skipped:
            log.info("plan: %s skipped: %s", planned.rung.label(), planned.reason)
    return chosen


def _engine(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    ladder: LadderSpec | None = None,
    profile: str | None = None,
    policy: Any = None,
    errors: Errors = "raise",
    ordered: bool = True,
    stall_timeout: float = 3.0,
    memory_error: MemoryErrors = "step-down",
    batch_size: int | None = None,
    reuse: bool = True,
    task_memory: int | str | None = None,
) -> Engine:
    if errors not in ("raise", "return"):
        raise UsageError(f"errors must be 'raise' or 'return', not {errors!r}")
    if memory_error not in ("step-down", "raise"):
        raise UsageError(f"memory_error must be 'step-down' or 'raise', not {memory_error!r}")
    if stall_timeout <= 0:
        raise UsageError(f"stall_timeout must be positive, not {stall_timeout!r}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, not {batch_size!r}")
    if not callable(fn):
        raise UsageError(f"fn must be callable, not {type(fn).__name__}")
    tasks = len(items) if isinstance(items, Sized) else None
    chosen = _resolve(ladder, profile, policy, tasks, task_memory)
    settings = Settings(
        errors=errors,
        ordered=ordered,
        stall_timeout=stall_timeout,
        memory_error_steps_down=memory_error == "step-down",
        batch_size=batch_size,
        reuse=reuse,
    )
    host, wait = _budget(chosen)
    return Engine(
        fn, items, list(chosen.usable_rungs()), settings, chosen, budget=host, budget_wait=wait
    )


def _budget(chosen: Plan) -> tuple[Budget | None, float]:
    """The host budget this plan's profile asks for, and how long a rung may wait for slots."""
    from .plan import budget_for

    host = budget_for(chosen.budget, chosen.resources, os.environ)
    waits = chosen.budget.get("on_exhausted") == "wait"
    return host, float(chosen.budget.get("wait", 30.0)) if waits else 0.0


def _progress(total: int | None, progress: bool | None) -> Any:
    """A tqdm bar on stderr: ``True`` always, ``None`` only on a terminal, ``False`` never."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True)


def run(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    ladder: LadderSpec | None = None,
    profile: str | None = None,
    policy: Any = None,
    errors: Errors = "raise",
    progress: bool | None = False,
    stall_timeout: float = 3.0,
    memory_error: MemoryErrors = "step-down",
    batch_size: int | None = None,
    reuse: bool = True,
    task_memory: int | str | None = None,
) -> Run[R]:
    """Run ``fn`` on every item, stepping down the ladder when the machine says no.

    Results come back in input order. With ``errors="raise"`` the first task exception is
    raised unchanged (its worker traceback as ``__cause__``) and the rest is cancelled; with
    ``errors="return"`` it takes that task's place in ``results``.

    ``ladder`` (e.g. ``["loky:3", "thread:2"]``) overrides the policy; otherwise ``profile``
    and ``policy`` pick one (see the policy docs). ``stall_timeout`` bounds how long dead
    executor machinery may hold tasks before it counts as a failure. ``memory_error`` says
    whether a ``MemoryError`` raised inside a task steps down (a rung with fewer workers may
    fit) or is the task's error. ``reuse`` keeps a healthy pool warm for the next call.
    ``task_memory`` (e.g. ``"300MiB"``) declares what one task holds; the plan sizes rungs
    with it.
    """
    engine = _engine(
        fn,
        items,
        ladder=ladder,
        profile=profile,
        policy=policy,
        errors=errors,
        ordered=True,
        stall_timeout=stall_timeout,
        memory_error=memory_error,
        batch_size=batch_size,
        reuse=reuse,
        task_memory=task_memory,
    )
    results: list[Any] = []
    bar = _progress(engine.report.tasks or None, progress)
    try:
        for _index, value, _ok in engine:
            results.append(value)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    log.info("%s", engine.report)
    return Run(results, engine.report)


def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    **options: Any,
) -> list[R]:
    """``run(fn, items, **options).results``."""
    return run(fn, items, **options).results


def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    ordered: bool = True,
    ladder: LadderSpec | None = None,
    profile: str | None = None,
    policy: Any = None,
    errors: Errors = "raise",
    stall_timeout: float = 3.0,
    memory_error: MemoryErrors = "step-down",
    batch_size: int | None = None,
    reuse: bool = True,
    task_memory: int | str | None = None,
) -> Results[R]:
    """Results as they come: in input order, or as completed with ``ordered=False``.

    Items are read lazily: a generator of a million items is never held in memory at once.
    The iterator's ``report`` tells what the run has done so far; ``close()`` stops it early.
    """
    engine = _engine(
        fn,
        items,
        ladder=ladder,
        profile=profile,
        policy=policy,
        errors=errors,
        ordered=ordered,
        stall_timeout=stall_timeout,
        memory_error=memory_error,
        batch_size=batch_size,
        reuse=reuse,
        task_memory=task_memory,
    )
    return Results(engine)


class Results(Iterator[R]):
    """The iterator ``imap`` returns: results, and the ``report`` of the run so far."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._outcomes = iter(engine)

    @property
    def report(self) -> Report:
        return self._engine.report

    def __iter__(self) -> Results[R]:
        return self

    def __next__(self) -> R:
        _index, value, _ok = next(self._outcomes)
        result: R = value
        return result

    def close(self) -> None:
        """Stop the run: cancel what is queued and free the executor."""
        close = getattr(self._outcomes, "close", None)
        if close is not None:
            close()
