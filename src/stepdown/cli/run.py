"""``stepdown run MODULE:FUNCTION --input items.jsonl --output results.jsonl``.

Batch jobs without Python glue. Each input line is one item (JSON); each output line is
``{"index": i, "result": ...}`` or ``{"index": i, "error": {...}}``, written and flushed as results
arrive, so a crash of this command loses nothing already written. ``--resume`` skips the indexes
already in the output (a truncated last line is dropped and redone).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..errors import RemoteTraceback, UsageError
from ..options import Options

__all__ = ["load_callable", "resume_state", "run_jsonl", "scan_input"]


def load_callable(spec: str) -> Callable[[Any], Any]:
    """``"package.module:function"`` (or ``module:Class.method``) → the callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{spec!r}: expected MODULE:FUNCTION, e.g. mypackage.scoring:score")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise UsageError(f"{spec!r} is not callable (it is a {type(target).__name__})")
    fn: Callable[[Any], Any] = target
    return fn


def scan_input(path: str) -> int:
    """Check every line of ``path`` is JSON; return the number of items. Blank lines are errors."""
    count = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    raise UsageError(
                        f"{path}:{number}: not JSON ({exc.msg} at column {exc.colno})"
                    ) from None
                count += 1
    except OSError as exc:
        raise UsageError(f"cannot read input {path}: {exc.strerror or exc}") from None
    return count


def _items(path: str, skip: set[int]) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if index not in skip:
                yield index, json.loads(line)


def resume_state(path: str) -> set[int]:
    """Indexes already in the output. A last line cut short by a crash is removed from the file."""
    done: set[int] = set()
    if not os.path.exists(path):
        return done
    good = 0
    with open(path, "rb") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                index = record["index"]
            except (ValueError, KeyError, TypeError):
                break  # a torn write: everything from here is redone
            if not line.endswith(b"\n"):
                break
            done.add(int(index))
            good += len(line)
    with open(path, "rb+") as handle:
        handle.truncate(good)
    return done


class _Indexed:
    """Calls ``fn`` on the item of an ``(index, item)`` pair; picklable when ``fn`` is."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, pair: tuple[int, Any]) -> Any:
        return self.fn(pair[1])


def _error_record(exc: BaseException) -> dict[str, Any]:
    """The worker's traceback when the task ran in another process, else the local one."""
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        text = cause.tb
    else:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": type(exc).__name__, "message": str(exc), "traceback": text}


def _line(index: int, value: Any, ok: bool) -> tuple[str, bool]:
    if ok:
        try:
            return json.dumps({"index": index, "result": value}), True
        except (TypeError, ValueError) as exc:
            record = {"type": type(exc).__name__, "message": f"result is not JSON: {exc}"}
            return json.dumps({"index": index, "error": record}), False
    return json.dumps({"index": index, "error": _error_record(value)}), False


def run_jsonl(
    fn: Callable[[Any], Any],
    input_path: str,
    output_path: str,
    *,
    resume: bool,
    errors: str,
    progress: bool | None,
    options: Options,
    stderr: IO[str],
) -> int:
    """Run the job; return the exit code (0 all done, 1 some task failed)."""
    from ..api import start
    from ..runner.progress import progress_bar

    total = scan_input(input_path)
    done = resume_state(output_path) if resume else set()
    if not resume and os.path.exists(output_path) and os.path.getsize(output_path):
        raise UsageError(
            f"{output_path} exists and is not empty: pass --resume to continue it, or remove it"
        )
    todo = total - len([i for i in done if i < total])
    # The runner numbers what it reads; this remembers which input line each number was.
    lines: list[int] = []
    engine = start(_Indexed(fn), _Recorder(_items(input_path, done), lines), options)
    failed = 0
    bar = progress_bar(todo, progress)
    try:
        with open(output_path, "a", encoding="utf-8") as out:
            outcomes = iter(engine)
            for position, value, ok in outcomes:
                index = lines[position]
                line, good = _line(index, value, ok)
                out.write(line + "\n")
                out.flush()
                if not good:
                    failed += 1
                    if errors == "raise":
                        print(f"stepdown: item {index} failed: {_first_line(value)}", file=stderr)
                        break
                if bar is not None:
                    bar.update(1)
            outcomes.close()  # after a break: cancel what is queued, free the executor
    finally:
        if bar is not None:
            bar.close()
    print(str(engine.report), file=stderr)
    if done:
        print(f"resumed: {len(done)} items were already in {output_path}", file=stderr)
    return 1 if failed else 0


class _Recorder:
    """Passes ``(line, item)`` pairs through, noting each line number in read order."""

    def __init__(self, source: Iterator[tuple[int, Any]], pairs: list[int]) -> None:
        self.source = source
        self.pairs = pairs

    def __iter__(self) -> _Recorder:
        return self

    def __next__(self) -> tuple[int, Any]:
        pair = next(self.source)
        self.pairs.append(pair[0])
        return pair


def _first_line(value: Any) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}".splitlines()[0]
    return "result is not JSON"
