"""Running suspects alone: a task that may have killed its worker never runs in the caller
before it has been run by itself in a fresh process.

A batch of suspects runs in one fresh single-worker process; if that process dies, the batch is
split in two and each half runs alone again, so a poison task among many costs a few spawns,
not one per task. A single task that kills its process is reported as crashed, with the exit
code or signal.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from ..backends.forking import imports_settled
from ..backends.worker import prepare
from ..planning.launch import FRESH_METHODS, read_launch
from .batch import BatchResult, run_batch

__all__ = ["Crashed", "bisect", "run_alone"]

log = logging.getLogger("stepdown")


class Crashed:
    """The process that ran a batch died; ``exitcode`` < 0 is the signal."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode


def _child(conn: Connection, fn: bytes, items: Sequence[Any]) -> None:
    prepare()
    result = run_batch(fn, items, remote=True)
    conn.send(result)
    conn.close()


def run_alone(fn: bytes, items: Sequence[Any], start_method: str | None) -> BatchResult | Crashed:
    """Run ``items`` in one fresh process (``start_method``: the rung's; ``None``: Python's
    default, or fork where a fresh interpreter could not rebuild ``__main__``, which holds the
    items' classes). Raises ``OSError`` if no process can start."""
    if start_method is None:
        launch = read_launch()
        if launch.fresh_fails and launch.default in FRESH_METHODS and "fork" in launch.methods:
            start_method = "fork"
    context: Any = multiprocessing.get_context(start_method)
    if context.get_start_method() == "fork":
        imports_settled()
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(writer, fn, list(items)), daemon=True)
    try:
        process.start()
    finally:
        writer.close()
    try:
        while True:
            if reader.poll(0.05):
                try:
                    result: BatchResult = reader.recv()
                except EOFError:
                    break
                process.join()
                return result
            if not process.is_alive() and not reader.poll(0):
                break
    finally:
        reader.close()
    process.join()
    return Crashed(process.exitcode)


def bisect(
    fn: bytes, indexes: Sequence[int], items: Sequence[Any], start_method: str | None
) -> Iterator[tuple[Sequence[int], BatchResult | Crashed]]:
    """Yield ``(indexes, outcome)`` pieces that cover every suspect exactly once.

    A piece is a :class:`BatchResult` for tasks that ran, or :class:`Crashed` for a single
    task that killed its process.
    """
    outcome = run_alone(fn, items, start_method)
    if isinstance(outcome, BatchResult) or len(items) == 1:
        yield indexes, outcome
        return
    half = len(items) // 2
    yield from bisect(fn, indexes[:half], items[:half], start_method)
    yield from bisect(fn, indexes[half:], items[half:], start_method)
