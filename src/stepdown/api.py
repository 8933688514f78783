"""The public entry points: ``run``, ``map``, ``imap``, and :func:`start` for callers that want
the runner's own ``(index, value, ok)`` outcomes (``stepdown run``, the demo)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import UsageError
from .options import Errors, Options
from .planning.setup import Setup, prepare
from .runner.engine import Engine
from .runner.progress import progress_bar
from .runner.report import Report

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import RunOptions

__all__ = ["Results", "Run", "imap", "map", "run", "start"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("stepdown")


@dataclass
class Run(Generic[R]):
    """A finished run: ``results`` in input order, and the ``report`` of what happened."""

    results: list[R]
    report: Report


def start(
    fn: Callable[[T], R], items: Iterable[T], options: Options, setup: Setup | None = None
) -> Engine:
    """The runner for ``fn`` over ``items``, set up once (policy, probe, plan, budget) unless a
    ``setup`` is given. Iterate it for ``(index, value, ok)``; its ``report`` and ``plan`` say
    what it did and why."""
    if not callable(fn):
        raise UsageError(f"fn must be callable, not {type(fn).__name__}")
    if setup is None:
        setup = prepare(options, len(items) if isinstance(items, Sized) else None)
    return Engine(fn, items, setup, options)


def run(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    errors: Errors = "raise",
    progress: bool | None = False,
    **options: Unpack[RunOptions],
) -> Run[R]:
    """Run ``fn`` on every item, stepping down the ladder when the machine says no.

    Results come back in input order. With ``errors="raise"`` the first task exception is
    raised unchanged (its worker traceback as ``__cause__``) and the rest is cancelled; with
    ``errors="return"`` it takes that task's place in ``results``. ``progress`` shows a bar on
    stderr (``None``: only on a terminal). The other options (``ladder``, ``profile``,
    ``policy``, ``max_workers``, ``task_memory``, ``stall_timeout``, ``memory_error``,
    ``batch_size``, ``reuse``) are :class:`~stepdown.options.Options`'.
    """
    engine = start(fn, items, Options(errors=errors, progress=progress, **options))
    results: list[Any] = []
    bar = progress_bar(engine.report.tasks or None, progress)
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
    *,
    errors: Errors = "raise",
    progress: bool | None = False,
    **options: Unpack[RunOptions],
) -> list[R]:
    """``run(fn, items, ...).results``."""
    return run(fn, items, errors=errors, progress=progress, **options).results


def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    ordered: bool = True,
    errors: Errors = "raise",
    **options: Unpack[RunOptions],
) -> Results[R]:
    """Results as they come: in input order, or as completed with ``ordered=False``.

    Items are read lazily: a generator of a million items is never held in memory at once.
    The iterator's ``report`` tells what the run has done so far; ``close()`` stops it early.
    """
    return Results(start(fn, items, Options(errors=errors, ordered=ordered, **options)))


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
