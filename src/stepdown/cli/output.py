"""The output of ``stepdown run``: a results file that is ours, written by one run at a time.

Opened before the input is read, so nothing is consumed for a run that cannot write::

    the path ── refused: under /proc or /sys, not a regular file, the input file itself
       │
    open, never truncated ── flock, or refused: another run holds it
       │
    no --resume: refused unless empty
    --resume: read back ── refused, the file left as it was: a line that is not one of ours
       │       ── a torn last line (a kill mid-write): cut off
       │       ── a torn or repeated line in the middle, and with --retry-errors an error
       │          line: the other lines are copied to a new file that takes its place (a
       │          crash then leaves the old file or the new one)
    appended to, one line a result

``-o -`` writes to stdout: no lock, no check, and no ``--resume``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

from ..errors import UsageError
from .jsonl import kind_of, read_line, system_path

__all__ = ["Output", "open_output"]

# How every line we write begins; a line cut short keeps some of it.
_START = b'{"index": '


class Output:
    """Where results go. ``done`` holds the indexes already in the file (``--resume``), and
    ``failed`` those of them whose line is an error; ``retried`` the indexes whose error line
    was removed to run them again (``--retry-errors``); ``repairs`` says which torn or repeated
    lines were removed, if any."""

    def __init__(self, name: str, fd: int, held: list[int]) -> None:
        self.name = name
        self.fd = fd
        self.held = held  # open while the run lasts: each holds a lock
        self.is_file = bool(held)
        self.done: set[int] = set()
        self.failed: set[int] = set()
        self.retried: set[int] = set()
        self.repairs: str | None = None

    def write(self, data: bytes) -> None:
        _write_all(self.fd, data)

    def close(self) -> None:
        for fd in self.held:
            os.close(fd)
        self.held = []


def open_output(
    path: str, *, resume: bool, input_stat: os.stat_result, retry_errors: bool = False
) -> Output:
    """The output, checked and locked; with ``resume``, read back and repaired, and with
    ``retry_errors`` its error lines removed too."""
    if path == "-":
        return _stdout(resume, input_stat)
    _check_path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            folder = os.path.dirname(path) or "."
            raise UsageError(f"cannot write output {path}: no directory {folder}") from None
        raise UsageError(f"cannot write output {path}: {exc.strerror or exc}") from None
    output = Output(path, fd, [fd])
    try:
        _refuse(os.fstat(fd), path, input_stat)
        _lock(fd, path)
        if not resume:
            if os.fstat(fd).st_size:
                raise UsageError(
                    f"{path} exists and is not empty: pass --resume to continue it, or remove it"
                )
            return output
        try:
            _resume(output, retry_errors)
        except OSError as exc:
            raise UsageError(f"cannot resume output {path}: {exc.strerror or exc}") from None
    except BaseException:
        output.close()
        raise
    return output


def _stdout(resume: bool, input_stat: os.stat_result) -> Output:
    if resume:
        raise UsageError("--resume reads the output back: give --output a file, not -")
    try:
        found = os.fstat(1)
    except OSError as exc:
        raise UsageError(f"cannot write output - (stdout): {exc.strerror or exc}") from None
    _same_file(found, "- (stdout)", input_stat)
    return Output("stdout", 1, [])


def _check_path(path: str) -> None:
    """Refused before it is opened (or created): opening a device can block or act."""
    try:
        _refuse_kind(os.stat(path), path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError(f"cannot write output {path}: {exc.strerror or exc}") from None
    root = system_path(path)
    if root is not None:
        raise UsageError(f"output {path} is under {root}: give a file elsewhere")


def _refuse_kind(found: os.stat_result, path: str) -> None:
    if stat.S_ISDIR(found.st_mode):
        raise UsageError(f"output {path} is a directory: give a file name")
    if not stat.S_ISREG(found.st_mode):
        raise UsageError(f"output {path} is {kind_of(found.st_mode)}: give a file, or - for stdout")


def _refuse(found: os.stat_result, path: str, input_stat: os.stat_result) -> None:
    _refuse_kind(found, path)  # again: the path may have changed since it was checked
    _same_file(found, path, input_stat)


def _same_file(found: os.stat_result, shown: str, input_stat: os.stat_result) -> None:
    if stat.S_ISREG(input_stat.st_mode) and (found.st_dev, found.st_ino) == (
        input_stat.st_dev,
        input_stat.st_ino,
    ):
        raise UsageError(
            f"output {shown} is the input file (the same file, maybe by a link): "
            "results would overwrite the items; give another --output"
        )


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(
            f"output {path} is in use by another stepdown run: wait for it to end, "
            "or give another --output"
        ) from None
    except OSError as exc:
        raise UsageError(
            f"cannot lock output {path} ({exc.strerror or exc}), which keeps two runs from "
            "writing it at once: give an --output on a local filesystem"
        ) from None


def _resume(output: Output, retry_errors: bool) -> None:
    """Read the file back: the indexes done; torn and repeated lines removed, and error lines
    when ``retry_errors``."""
    name = output.name
    drop: set[int] = set()  # offsets of the lines to remove
    removed: list[str] = []  # of them, the whole lines: a kill cuts only the last one
    first_drop: int | None = None
    kept_after_drop = False
    for number, offset, line in _lines(output.fd, name):
        index, failed = _index(line, name, number)
        whole = line.endswith(b"\n")
        if whole and index is not None and index not in output.done:
            if not (failed and retry_errors):
                output.done.add(index)
                output.retried.discard(index)
                if failed:
                    output.failed.add(index)
                kept_after_drop = first_drop is not None
                continue
            output.retried.add(index)  # an error line, removed so that its item runs again
        elif whole:
            why = "cut short" if index is None else f"index {index} again"
            removed.append(f"{number} ({why})")
        drop.add(offset)
        first_drop = offset if first_drop is None else first_drop
    if first_drop is None:
        return
    if kept_after_drop:
        output.fd = _rewrite(output.fd, name, drop)
        output.held.append(output.fd)
    else:
        os.ftruncate(output.fd, first_drop)
    if removed:
        more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
        output.repairs = (
            f"{name}: removed line {', '.join(removed[:5])}{more}; "
            "an item with no other line in the file runs again"
        )


def _index(line: bytes, name: str, number: int) -> tuple[int | None, bool]:
    """The index a result line holds (``None`` for a line cut short), and whether the line is
    an error. Anything else means the file is not a run's output, and it is refused as it is."""
    try:
        record: Any = json.loads(line)
    except (ValueError, RecursionError):
        body = line.rstrip(b"\n")
        if body and (body.startswith(_START) or _START.startswith(body)):
            return None, False
        record = None
    if isinstance(record, dict) and len(record) == 2 and {"result", "error"} & record.keys():
        index = record.get("index")
        if type(index) is int and index >= 0:
            return index, "error" in record
    raise UsageError(
        f"{name}:{number}: not a line stepdown run writes, so {name} is not the output of a "
        "run; it was left as it is: give another --output"
    )


def _lines(fd: int, name: str) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, offset, line)`` from the start of the file."""
    with open(fd, "rb", closefd=False) as reader:
        reader.seek(0)
        offset = number = 0
        while line := read_line(reader, name, number + 1):
            number += 1
            yield number, offset, line
            offset += len(line)


def _rewrite(fd: int, name: str, drop: set[int]) -> int:
    """The lines kept, in a new file put in place of the old one; its descriptor, locked.

    The old file stays open and locked while the run lasts, so a run that opened it before
    the swap still finds it taken. A link stays a link: the file it names is replaced.
    """
    target = os.path.realpath(name)
    new, temporary = tempfile.mkstemp(
        prefix=os.path.basename(target) + ".", suffix=".repair", dir=os.path.dirname(target)
    )
    try:
        fcntl.flock(new, fcntl.LOCK_EX)  # before the swap gives it the name
        os.fchmod(new, stat.S_IMODE(os.fstat(fd).st_mode))
        for _, offset, line in _lines(fd, name):
            if offset not in drop:
                _write_all(new, line)
        os.fsync(new)
        os.replace(temporary, target)
    except BaseException:
        os.close(new)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return new


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
