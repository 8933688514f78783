"""``stepdown run MODULE:FUNCTION --input items.jsonl --output results.jsonl``.

Batch jobs without Python glue. Each input line is one item (JSON); each output line is
``{"index": i, "result": ...}`` or ``{"index": i, "error": {...}}``, written as results arrive,
so a crash of this command loses nothing already written. ``--resume`` skips the indexes
already in the output (``--retry-errors`` also runs again those whose line is an error);
``--report-json`` writes the report as JSON. What the input and the output may be, and how a
torn output is repaired: :mod:`.jsonl` and :mod:`.output`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..errors import RemoteTraceback, StepdownError, UsageError
from ..options import Options
from .jsonl import MAX_LINE, Input
from .output import Output, open_output

__all__ = ["load_callable", "run_jsonl"]


def load_callable(spec: str) -> Callable[[Any], Any]:
    """``"package.module:function"`` (or ``module:Class.method``) → the callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{spec!r}: expected MODULE:FUNCTION, e.g. mypackage.scoring:score")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        raise UsageError(
            f"cannot import module {module_name!r}: it called sys.exit({exc.code!r})"
        ) from None
    except BaseException as exc:  # the module's own code ran: whatever it raised is a bad module
        detail = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        raise UsageError(
            f"cannot import module {module_name!r}: {' '.join(detail.splitlines())}"
        ) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise UsageError(f"{spec!r} is not callable (it is a {type(target).__name__})")
    fn: Callable[[Any], Any] = target
    return fn


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


def _line(index: int, value: Any, ok: bool) -> tuple[bytes, str | None]:
    """The output line, and why the item failed (``None`` when it did not)."""
    if not ok:
        why = f"{type(value).__name__}: {value}".splitlines()[0]
        return _dumps({"index": index, "error": _error_record(value)}), why
    try:
        line = _dumps({"index": index, "result": value})
    except (TypeError, ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return _not_written(index, type(exc).__name__, f"result is not JSON: {detail}")
    if len(line) > MAX_LINE:  # a line --resume could not read back
        why = (
            f"result is too large: {len(line)} bytes of JSON, "
            f"more than the {MAX_LINE // 2**20} MiB a line may hold"
        )
        return _not_written(index, "ValueError", why)
    return line, None


def _not_written(index: int, kind: str, why: str) -> tuple[bytes, str]:
    return _dumps({"index": index, "error": {"type": kind, "message": why}}), why


def _dumps(record: dict[str, Any]) -> bytes:
    return (json.dumps(record) + "\n").encode("utf-8")


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
    retry_errors: bool = False,
    report_json: str | None = None,
) -> int:
    """Run the job; return the exit code (0 all done, 1 some item failed, in this run or an
    earlier one whose error line is kept; 2 it could not finish: the results written are
    kept). ``retry_errors`` runs the items of error lines again; ``report_json`` is a path
    (``-``: stdout) for the report as JSON."""
    if report_json is not None:
        _check_report_path(report_json, input_path, output_path)
    source = Input(input_path)
    try:
        output = open_output(
            output_path, resume=resume, input_stat=source.stat, retry_errors=retry_errors
        )
        try:
            if output.repairs:
                print(f"stepdown: {output.repairs}", file=stderr)
            source.check()
            summary = _run(fn, source, output, errors, progress, options, stderr)
        finally:
            output.close()
    finally:
        source.close()
    if report_json is not None:
        _write_report(report_json, summary)
    code: int = summary["exit_code"]
    return code


def _check_report_path(path: str, input_path: str, output_path: str) -> None:
    """Refused before the run, not after it: a report that cannot be written, or that would
    overwrite the items or the results."""
    if path == "-":
        if output_path == "-":
            raise UsageError("--report-json - and --output - would both write to stdout")
        return
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write --report-json {path}: no directory {folder}")
    for other, what in ((input_path, "--input"), (output_path, "--output")):
        if other != "-" and os.path.realpath(other) == os.path.realpath(path):
            raise UsageError(f"--report-json {path} is the {what} file: give another path")


def _write_report(path: str, summary: dict[str, Any]) -> None:
    text = json.dumps(summary, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write --report-json {path}: {exc.strerror or exc}") from None


def _run(
    fn: Callable[[Any], Any],
    source: Input,
    output: Output,
    errors: str,
    progress: bool | None,
    options: Options,
    stderr: IO[str],
) -> dict[str, Any]:
    """Run what is left; the report, as :func:`run_jsonl` writes it with ``--report-json``."""
    from ..api import start
    from ..runner.progress import progress_bar

    done = {i for i in output.done if i < source.count}
    earlier = sorted(i for i in output.failed if i < source.count)
    # The runner numbers what it reads; this remembers which input line each number was.
    lines: list[int] = []
    engine = start(_Indexed(fn), _Recorder(source.items(done), lines), options)
    failed = written = 0
    stopped: str | None = None
    broken = False  # the run could not finish: no rung left, or the output took no more
    bar = progress_bar(source.count - len(done), progress, engine.report)
    outcomes = iter(engine)
    try:
        for position, value, ok in outcomes:
            index = lines[position]
            line, why = _line(index, value, ok)
            try:
                output.write(line)
            except OSError as exc:
                raise UsageError(
                    f"cannot write output {output.name}: {exc.strerror or exc}"
                ) from None
            written += 1
            if why is not None:
                failed += 1
                if errors == "raise":
                    stopped = f"item {index} failed: {why}"
                    print(f"stepdown: {stopped}", file=stderr)
                    break
            if bar is not None:
                bar.update(1)
    except StepdownError as exc:
        kept = f"{written} results written to {output.name} by this run"
        if output.is_file:
            kept = f"the {kept} are kept: run again with --resume to finish"
        stopped = f"{' '.join(str(exc).splitlines())}; {kept}"
        broken = True
        print(f"stepdown: {stopped}", file=stderr)
    finally:
        outcomes.close()  # after a break or a failure: cancel what is queued, free the executor
        if bar is not None:
            bar.close()
    if not broken:
        print(str(engine.report), file=stderr)
    if done:
        print(f"resumed: {len(done)} items were already in {output.name}", file=stderr)
    if output.retried:
        print(f"retried: {len(output.retried)} items whose line was an error", file=stderr)
    if earlier:
        print(
            f"stepdown: {len(earlier)} items in {output.name} are errors from an earlier run "
            f"(first: item {earlier[0]}): --retry-errors runs them again",
            file=stderr,
        )
    code = 2 if broken else 1 if failed or earlier else 0
    return {
        "exit_code": code,
        "input": source.name,
        "output": output.name,
        "items": source.count,
        "resumed": len(done),
        "retried_errors": len(output.retried),
        "earlier_errors": len(earlier),
        "written": written,
        "failed": failed,
        "stopped": stopped,
        "summary": str(engine.report),
        "report": engine.report.to_dict(),
    }


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
