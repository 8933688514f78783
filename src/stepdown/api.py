"""The public entry points: ``run``, ``map``, ``imap``, and :func:`start` for callers that want
the runner's own ``(index, value, ok)`` outcomes (``stepdown run``, the demo)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from .errors import StepdownError, UsageError
from .options import Errors, Options
from .planning import worktime
from .planning.setup import Setup, prepare
from .records import record
from .runner.batch import Starred
from .runner.engine import Engine
from .runner.progress import Bar, progress_bar
from .runner.report import Report

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import RunOptions

__all__ = ["Results", "Run", "finished", "imap", "map", "run", "start"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("stepdown")


@record
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
    key = worktime.key_of(fn)
    if setup is None:
        tasks = len(items) if isinstance(items, Sized) else None
        setup = prepare(options, tasks, work=worktime.seconds(key))
    return Engine(fn, items, setup, options, learn=key)


class _Zipped:
    """``zip(*iterables)``, read lazily like it."""

    def __init__(self, iterables: tuple[Iterable[Any], ...]) -> None:
        self.iterables = iterables

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return zip(*self.iterables, strict=False)


class _SizedZipped(_Zipped):
    """``zip(*iterables)`` with the length of the shortest, for the plan."""

    def __len__(self) -> int:
        return min(len(i) for i in self.iterables)  # type: ignore[arg-type]


def _one_argument(
    fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...]
) -> tuple[Callable[[Any], Any], Iterable[Any]]:
    """One function of one item over one iterable, whether given one or several (zipped)."""
    if len(iterables) == 1:
        return fn, iterables[0]
    if not callable(fn):
        raise UsageError(f"fn must be callable, not {type(fn).__name__}")
    sized = all(isinstance(i, Sized) for i in iterables)
    # Starred lives in the worker-side module: a worker unpickling it imports nothing more.
    return Starred(fn), (_SizedZipped if sized else _Zipped)(iterables)


def finished(exc: BaseException) -> dict[int, Any]:
    """The results that had finished when ``exc`` ended a ``run``, ``map`` or ``imap``, by
    input index: a task exception (``errors="raise"``), ``KeyboardInterrupt`` or a
    :class:`~stepdown.errors.StepdownError`; empty for any other exception.

    >>> try:
    ...     stepdown.map(lambda x: 1 // x, [1, 2, 0, 4], ladder=["sequential"])
    ... except ZeroDivisionError as exc:
    ...     stepdown.finished(exc)
    {0: 1, 1: 0}
    """
    kept: dict[int, Any] = getattr(exc, "_stepdown_finished", {})
    return dict(kept)


_ENDINGS = (KeyboardInterrupt, StepdownError)


def _keep(engine: Engine, exc: BaseException, delivered: dict[int, Any]) -> None:
    """Attach to the exception ending the run (a task's, a Ctrl-C, a ``ResourceFailure``)
    the results that had finished."""
    if engine.delivery.raised is not exc and not isinstance(exc, _ENDINGS):
        return
    kept = dict(delivered)
    kept.update((i, value) for i, (value, ok) in engine.waiting.items() if ok)
    # An exception that takes no attributes: finished() is empty.
    with contextlib.suppress(Exception):
        exc._stepdown_finished = kept  # type: ignore[attr-defined]


@overload
def run(
    fn: Callable[..., R],
    iterable: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    errors: Literal["raise"] = "raise",
    progress: bool | None = None,
    **options: Unpack[RunOptions],
) -> Run[R]: ...


@overload
def run(
    fn: Callable[..., R],
    iterable: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    errors: Literal["return"],
    progress: bool | None = None,
    **options: Unpack[RunOptions],
) -> Run[R | BaseException]: ...


def run(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    errors: Errors = "raise",
    progress: bool | None = None,
    **options: Unpack[RunOptions],
) -> Run[Any]:
    """Run ``fn`` on every item, stepping down the ladder when the machine says no.

    Several iterables work as for the builtin ``map``: ``fn`` takes one argument from each, and
    the run stops with the shortest. Results come back in input order. With ``errors="raise"``
    the first task exception is raised unchanged (its worker traceback as ``__cause__``, a note
    naming the task) and the rest is cancelled; :func:`finished` gives the results that had
    finished. With ``errors="return"`` it takes that task's place in ``results``. ``progress``
    shows a bar on stderr naming the rung that runs (``None``: where a person is watching, a
    terminal or a notebook, not in CI, once the run has lasted a second). The other options
    (``ladder``, ``profile``, ``policy``, ``max_workers``, ``task_memory``, ``task_timeout``,
    ``initializer``, ``initargs``, ``max_tasks_per_child``, ``stall_timeout``,
    ``memory_error``, ``batch_size``, ``reuse``) are :class:`~stepdown.options.Options`'.
    """
    one, items = _one_argument(fn, (iterable, *iterables))
    engine = start(one, items, Options(errors=errors, progress=progress, **options))
    results: list[Any] = []
    bar = progress_bar(engine.report.tasks or None, progress, engine.report)
    try:
        for _index, value, _ok in engine:
            results.append(value)
            if bar is not None:
                bar.update(1)
    except BaseException as exc:
        _keep(engine, exc, dict(enumerate(results)))
        raise
    finally:
        if bar is not None:
            bar.close()
    log.info("%s", engine.report)
    return Run(results, engine.report)


@overload
def map(
    fn: Callable[..., R],
    iterable: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    errors: Literal["raise"] = "raise",
    progress: bool | None = None,
    **options: Unpack[RunOptions],
) -> list[R]: ...


@overload
def map(
    fn: Callable[..., R],
    iterable: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    errors: Literal["return"],
    progress: bool | None = None,
    **options: Unpack[RunOptions],
) -> list[R | BaseException]: ...


def map(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    errors: Errors = "raise",
    progress: bool | None = None,
    **options: Unpack[RunOptions],
) -> list[Any]:
    """``run(fn, *iterables, ...).results``."""
    return run(fn, iterable, *iterables, errors=errors, progress=progress, **options).results


@overload
def imap(
    fn: Callable[..., R],
    iterable: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    ordered: bool = True,
    errors: Literal["raise"] = "raise",
    progress: bool | None = None,
    **options: Unpack[RunOptions],
) -> Results[R]: ...


@overload
def imap(
    fn: Callable[..., R],
    iterable: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    ordered: bool = True,
    errors: Literal["return"],
    progress: bool | None = None,
    **options: Unpack[RunOptions],
) -> Results[R | BaseException]: ...


def imap(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    ordered: bool = True,
    errors: Errors = "raise",
    progress: bool | None = None,
    **options: Unpack[RunOptions],
) -> Results[Any]:
    """Results as they come: in input order, or as completed with ``ordered=False``.

    Items are read lazily: a generator of a million items is never held in memory at once.
    The iterator's ``report`` tells what the run has done so far; ``close()`` stops it early.
    ``progress`` is ``run``'s.
    """
    one, items = _one_argument(fn, (iterable, *iterables))
    chosen = Options(errors=errors, ordered=ordered, progress=progress, **options)
    engine = start(one, items, chosen)
    return Results(engine, progress_bar(engine.report.tasks or None, progress, engine.report))


def _counted(engine: Engine, bar: Bar | None) -> Generator[tuple[int, Any, bool], None, None]:
    """The engine's outcomes, each counted on ``bar``; closing this closes both."""
    outcomes = iter(engine)
    try:
        for outcome in outcomes:
            if bar is not None:
                bar.update(1)
            yield outcome
    finally:
        outcomes.close()
        if bar is not None:
            bar.close()


class Results(Iterator[R]):
    """The iterator ``imap`` returns: results, and the ``report`` of the run so far."""

    def __init__(self, engine: Engine, bar: Bar | None = None) -> None:
        self._engine = engine
        self._outcomes = _counted(engine, bar)

    @property
    def report(self) -> Report:
        return self._engine.live_report()

    def __iter__(self) -> Results[R]:
        return self

    def __next__(self) -> R:
        try:
            _index, value, _ok = next(self._outcomes)
        except BaseException as exc:
            _keep(self._engine, exc, {})
            raise
        result: R = value
        return result

    def close(self) -> None:
        """Stop the run: cancel what is queued and free the executor."""
        self._outcomes.close()
