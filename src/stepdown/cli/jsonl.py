"""The input of ``stepdown run``: a JSONL file, a pipe or stdin, read line by bounded line.

A regular file is read twice: once to check every line before any work starts, once to run.
A pipe, a FIFO or stdin (``-``) can be read only once, so it is copied to a temporary file
while it is checked, and the run reads the copy. Anything else (a directory, a device such as
``/dev/zero``, a terminal, a file under ``/proc`` or ``/sys``) is refused before it is read.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from ..errors import UsageError

__all__ = ["MAX_LINE", "Input", "kind_of", "read_line", "system_path"]

# One line, its newline included, in the input or the output: what a line may cost in memory.
MAX_LINE = 64 * 1024 * 1024
_SYSTEM_ROOTS = ("/proc", "/sys")


def kind_of(mode: int) -> str:
    """``st_mode`` → what a message calls that kind of file."""
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def system_path(path: str) -> str | None:
    """``/proc`` or ``/sys`` when ``path`` (its links followed) is under one: kernel files whose
    sizes are not what reading them returns, and some of which change the system when written."""
    real = os.path.realpath(path)
    return next((r for r in _SYSTEM_ROOTS if real == r or real.startswith(r + "/")), None)


def read_line(handle: IO[bytes], name: str, number: int) -> bytes:
    """The next line (``b""`` at the end), refused when longer than :data:`MAX_LINE`."""
    line = handle.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise UsageError(
            f"{name}:{number}: line longer than {MAX_LINE // 2**20} MiB, the most stepdown "
            "reads as one line; check that this is a JSONL file"
        )
    return line


def _parse(line: bytes, name: str, number: int) -> Any:
    where = f"{name}:{number}"
    try:
        return json.loads(line.rstrip(b"\r\n").decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{where}: not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}); "
            "save the file as UTF-8"
        ) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer of more digits than int() converts
        raise UsageError(f"{where}: not JSON ({exc})") from None
    except RecursionError:
        raise UsageError(
            f"{where}: JSON nested too deeply to read (the limit is about "
            f"{sys.getrecursionlimit()} levels)"
        ) from None


class Input:
    """The items of a run. Opening checks what kind of file it is and reads nothing;
    :meth:`check` reads it once; :meth:`items` then yields ``(index, item)`` pairs."""

    def __init__(self, path: str) -> None:
        self.name = "stdin" if path == "-" else path
        self.count = 0
        self.handle = self._open(path)
        try:
            self.stat = os.fstat(self.handle.fileno())
            self._refuse(self.stat, path)
            self.start = self.handle.tell() if stat.S_ISREG(self.stat.st_mode) else 0
        except BaseException:
            self.close()
            raise

    def _open(self, path: str) -> IO[bytes]:
        try:
            if path == "-":
                return open(0, "rb", closefd=False)
            # Checked before opening: opening a device can block or act (a tape, a watchdog).
            self._refuse(os.stat(path), path)
            return open(path, "rb")
        except OSError as exc:
            raise UsageError(f"cannot read input {self.name}: {exc.strerror or exc}") from None

    def _refuse(self, found: os.stat_result, path: str) -> None:
        mode = found.st_mode
        if stat.S_ISREG(mode):
            root = system_path(path) if path != "-" else None
            if root is not None:
                raise UsageError(f"input {path} is under {root}: give a JSONL file")
            return
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return
        if path == "-" and os.isatty(self.handle.fileno()):
            raise UsageError(
                "input - (stdin) is a terminal: pipe the items in, "
                "e.g. `cat items.jsonl | stepdown run ... -i -`, or give a file"
            )
        raise UsageError(
            f"input {self.name} is {kind_of(mode)}: give a JSONL file, a pipe, or - for stdin"
        )

    @property
    def streamed(self) -> bool:
        return not stat.S_ISREG(self.stat.st_mode)

    def check(self) -> None:
        """Read every line once: each must be JSON (a blank line is an error). A stream is
        kept in a temporary file as it is read, for the run to read again."""
        spool = self._spool() if self.streamed else None
        number = 0
        try:
            while line := self._next(number + 1):
                number += 1
                _parse(line, self.name, number)
                if spool is not None:
                    spool.write(line if line.endswith(b"\n") else line + b"\n")
            if spool is not None:
                spool.flush()
        except OSError as exc:  # _next turns read errors into UsageError: this is the copy
            raise self._no_room(exc) from None
        self.count = number
        if spool is not None:
            self.handle.close()
            self.handle = spool

    def _spool(self) -> IO[bytes]:
        try:
            return tempfile.TemporaryFile()
        except OSError as exc:
            raise self._no_room(exc) from None

    def _no_room(self, exc: OSError) -> UsageError:
        return UsageError(
            f"cannot keep a copy of input {self.name} in {tempfile.gettempdir()} "
            f"({exc.strerror or exc}): a stream is read once and kept there; "
            "set TMPDIR to a directory with room, or give the input as a file"
        )

    def _next(self, number: int) -> bytes:
        try:
            return read_line(self.handle, self.name, number)
        except OSError as exc:
            raise UsageError(f"cannot read input {self.name}: {exc.strerror or exc}") from None

    def items(self, skip: set[int]) -> Iterator[tuple[int, Any]]:
        """``(index, item)`` for each checked line whose index is not in ``skip``."""
        self.handle.seek(self.start)
        for index in range(self.count):
            line = self._next(index + 1)
            if not line:
                raise UsageError(
                    f"{self.name} got shorter while the run read it: line {index + 1} "
                    f"of {self.count} is gone"
                )
            if index not in skip:
                yield index, _parse(line, self.name, index + 1)

    def close(self) -> None:
        self.handle.close()
