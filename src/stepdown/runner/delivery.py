"""Handing finished batches to the caller, task by task, and running suspects alone first.

A task's exception is the task's outcome: raised with ``errors="raise"``, else delivered in the
task's place, with the worker's traceback as ``__cause__``. Only a ``MemoryError`` raised inside
a task may instead send the task back to run on a smaller rung (``memory_error="step-down"``).
"""

from __future__ import annotations

import logging
import os
import reprlib
import time
from collections.abc import Generator, Iterator
from typing import Any

from ..errors import RemoteTraceback, TaskCrashed, TaskTimeout
from ..options import Options
from .batch import BatchResult, TaskException, add_note
from .flights import Batch, Feed, Sizer
from .memory import MemoryCare
from .report import Report, RungRecord

__all__ = ["Delivery", "Outcome"]

log = logging.getLogger("stepdown")

Outcome = tuple[int, Any, bool]


class Delivery:
    """Turns batch results into ``(index, value, ok)`` outcomes and keeps the count."""

    def __init__(
        self, options: Options, feed: Feed, sizer: Sizer, report: Report, memory: MemoryCare
    ) -> None:
        self.options = options
        self.memory = memory
        self.feed = feed
        self.sizer = sizer
        self.report = report
        self.delivered = 0
        # The task exception raised to the caller (errors="raise"), once one was.
        self.raised: BaseException | None = None

    def deliver(
        self, batch: Batch, record: RungRecord, result: BatchResult, can_step_down: bool
    ) -> Generator[list[Outcome], None, MemoryError | None]:
        """Hand a finished batch's outcomes out, as one list (a task exception raised with
        ``errors="raise"`` after the outcomes before it); return a MemoryError that should step
        down."""
        try:
            result = result.unpacked()
        except Exception as unpacking:  # a MemoryError included
            return (yield from self._unpack_failed(batch, record, unpacking, can_step_down))
        self.sizer.observe(len(batch.items), result.elapsed)
        self.memory.observe(result)
        errors = result.errors
        values = result.values
        if not errors:  # the common case, without a test per task
            record.finished += len(values)
            self.delivered += len(values)
            yield list(zip(batch.indexes, values, [True] * len(values), strict=True))
            return None
        out: list[Outcome] = []
        step_down: MemoryError | None = None
        for position, index in enumerate(batch.indexes):
            if position in errors:
                exc = _task_exception(errors[position])
                if (
                    isinstance(exc, MemoryError)
                    and self.options.memory_error == "step-down"
                    and can_step_down
                    and self.memory.room(record.workers, remote=result.pid != os.getpid())
                ):
                    self.feed.requeue(Batch([index], [batch.items[position]]))
                    step_down = step_down or exc
                    continue
                _name(exc, index, batch.items[position])
                if out and self.options.errors == "raise":
                    yield out  # what came before it first
                    out = []
                out.append(self.failed(index, exc))
                record.finished += 1
                continue
            record.finished += 1
            self.delivered += 1
            out.append((index, values[position], True))
        if out:
            yield out
        return step_down

    def _unpack_failed(
        self, batch: Batch, record: RungRecord, exc: Exception, can_step_down: bool
    ) -> Generator[list[Outcome], None, MemoryError | None]:
        """A batch's results came back but cannot be rebuilt here: a MemoryError steps down
        (``memory_error="step-down"``); a batch of several runs again a task at a time, to
        find the result at fault; a single task's result fails that task."""
        size = len(batch.items)
        if (
            isinstance(exc, MemoryError)
            and self.options.memory_error == "step-down"
            and can_step_down
        ):
            self.feed.requeue(batch)
            return exc
        if size > 1:
            log.info(
                "the results of %d tasks could not be rebuilt in the caller (%s: %s); running "
                "them again one at a time",
                size,
                type(exc).__name__,
                exc,
            )
            self.report.rerun += size
            for index, item in zip(batch.indexes, batch.items, strict=True):
                self.feed.requeue(Batch([index], [item]))
            return None
        index = batch.indexes[0]
        add_note(exc, f"stepdown: the result of task {index} could not be rebuilt here")
        _name(exc, index, batch.items[0])
        record.finished += 1
        yield [self.failed(index, exc)]
        return None

    def failed(self, index: int, exc: BaseException) -> Outcome:
        """Task ``index`` raised ``exc``: raise it (``errors="raise"``), or its outcome."""
        if not isinstance(exc, TaskTimeout):
            self.report.task_errors += 1
        self.delivered += 1
        if self.options.errors == "raise":
            self.raised = exc
            raise exc
        return index, exc, False

    def isolate(self, payload: bytes, start_method: str | None) -> Iterator[list[Outcome]]:
        """Run each suspect batch alone in fresh processes before an in-process rung."""
        from .isolation import Crashed, bisect  # multiprocessing: only when needed

        record = RungRecord(label="isolation(1)", backend="isolation", workers=1, started=True)
        self.report.rungs.append(record)
        began = time.perf_counter()
        for batch in self.feed.take_suspects():
            self.report.isolated += len(batch.items)
            items = dict(zip(batch.indexes, batch.items, strict=True))
            try:
                pieces = list(bisect(payload, batch.indexes, batch.items, start_method))
            except OSError as exc:
                log.warning(
                    "cannot start a process to isolate %d suspect task%s (%s); they run on "
                    "the next rung",
                    len(batch.items),
                    "" if len(batch.items) == 1 else "s",
                    exc,
                )
                batch.suspect = False
                self.feed.requeue(batch)
                continue
            for indexes, outcome in pieces:
                if isinstance(outcome, Crashed):
                    index = indexes[0]
                    self.report.crashed.append(index)
                    log.warning(
                        "task %d killed its worker process again; reported as crashed", index
                    )
                    yield [self.failed(index, TaskCrashed(index, outcome.exitcode))]
                    continue
                piece = Batch(list(indexes), [items[i] for i in indexes])
                yield from self.deliver(piece, record, outcome, can_step_down=False)
        record.wall = time.perf_counter() - began


def _task_exception(error: BaseException | TaskException) -> BaseException:
    if isinstance(error, TaskException):
        exc = error.exc
        exc.__cause__ = RemoteTraceback(error.tb)
        return exc
    return error


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60


def _name(exc: BaseException, index: int, item: Any) -> None:
    """Note on a task's exception which task raised it (shown under its traceback)."""
    add_note(exc, f"stepdown: raised by task {index} (item {_short.repr(item)})")
