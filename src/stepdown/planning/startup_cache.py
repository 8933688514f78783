"""The start-up cost cache: one small JSON file per user, read cheaply, replaced whole.

The file is ``.startup-costs.json`` in the per-user runtime directory the host budget uses
(:func:`stepdown.budget.location.locate`), opened with the budget's checks: the directory is
this user's, writable by no one else, and no symbolic link is followed
(:mod:`stepdown.budget.slots`). The leading dot keeps it from ever taking a budget's name.

::

    {"format": 1, "entries": {KEY: {"changed": time, "kinds": {KIND: FIGURES}}}}

    KEY      what the figures hold for: the interpreter's path and version, the CPU count, and
             each backend dependency's version (at most 8 keys: one per venv, say)
    FIGURES  samples  the last start figures in seconds (median: the start cost)
             imports  seconds, when measured;  measured, by  when and by what
             recorded starts folded in since;  last  when the last was

A file that is missing, corrupt or refused is no figures (a DEBUG line, never an error).
Writes go to a new file that then replaces the old one, so no reader sees half a file; two
processes writing at once may lose one's figure, never the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..backends.registry import infos
from ..budget.location import locate
from ..budget.slots import OPEN_READ, open_directory, open_slot
from ..errors import UsageError

__all__ = ["SAMPLES", "Figures", "cache_path", "cached", "is_seconds", "update"]

log = logging.getLogger("stepdown")

# One kind's figures as kept in the file (see the module docstring).
Figures = dict[str, Any]

SAMPLES = 5
_FILE = ".startup-costs.json"
_FORMAT = 1
_MAX_BYTES = 1 << 16
_ENTRIES = 8


class _Memo:
    """The figures as last read or written by this process, and the file's (path, inode,
    mtime, size) then: another path (XDG_RUNTIME_DIR changed) or another file is read anew."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: str | None = None
        self.stamp: tuple[str, int, int, int] | None = None
        self.kinds: dict[str, Figures] = {}


_MEMO = _Memo()


def _after_fork_in_child() -> None:
    # A fork while another thread was recording must not leave the child's lock held for good
    # (a task that plans a run of its own reads the costs).
    _MEMO.lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def cache_path() -> str:
    """Where the cache file is (or would be)."""
    return f"{locate().root}/{_FILE}"


def cached() -> dict[str, Figures]:
    """This key's figures per kind; the file is read again only when it changed (or vanished).

    Never raises: a refused or unreadable file leaves what this process knew (a DEBUG line).
    """
    with _MEMO.lock:
        try:
            dir_fd, shown = _open_root(create=False)
            if dir_fd is None:
                _MEMO.stamp, _MEMO.kinds = None, {}
                return dict(_MEMO.kinds)
            try:
                try:
                    st = os.stat(_FILE, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    _MEMO.stamp, _MEMO.kinds = None, {}
                    return {}
                if (shown, st.st_ino, st.st_mtime_ns, st.st_size) != _MEMO.stamp:
                    _MEMO.stamp, document = _read(dir_fd, shown)
                    _MEMO.kinds = _valid(document.get("entries", {}).get(_key()))
            finally:
                os.close(dir_fd)
        except (OSError, UsageError) as exc:
            log.debug("start-up costs: %s not read: %s", _FILE, exc)
        return dict(_MEMO.kinds)


def update(change: Callable[[dict[str, Figures]], None]) -> None:
    """Read the file, let ``change`` edit this key's figures in place, and replace the file.

    Raises :class:`UsageError` for a directory or file the budget would refuse, ``OSError``
    when it cannot be written.
    """
    with _MEMO.lock:
        dir_fd, shown = _open_root(create=True)
        assert dir_fd is not None
        try:
            _, document = _read(dir_fd, shown)
            entries = document.get("entries", {})
            kinds = _valid(entries.get(_key()))
            change(kinds)
            entries[_key()] = {"kinds": kinds, "changed": time.time()}
            if len(entries) > _ENTRIES:
                newest = sorted(entries, key=lambda k: _changed(entries[k]), reverse=True)
                entries = {k: entries[k] for k in newest[:_ENTRIES]}
            # Compact: with an indent, json encodes in Python, not C (3x slower), and this
            # write is on the path of a run.
            document = {"format": _FORMAT, "entries": entries}
            data = json.dumps(document, separators=(",", ":")).encode()
            _MEMO.stamp = _write(dir_fd, data, shown)
            _MEMO.kinds = kinds
        finally:
            os.close(dir_fd)


def is_seconds(value: object) -> bool:
    """A finite number >= 0 (and not a bool)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _key() -> str:
    if _MEMO.key is None:
        parts = [sys.executable, " ".join(sys.version.split()), f"cpus={os.cpu_count()}"]
        for backend in infos():
            if backend.dependency is not None:
                name = backend.distribution or backend.dependency
                parts.append(f"{name}={_version(backend.dependency, name)}")
        _MEMO.key = "; ".join(parts)
    return _MEMO.key


def _version(module: str, distribution: str) -> str:
    """The installed version of ``distribution``, from the name of its ``.dist-info`` directory
    beside ``module`` (importlib.metadata would cost ~80 ms to import, on every run)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return "absent"
    places = list(spec.submodule_search_locations or []) or [spec.origin or ""]
    wanted = distribution.replace("-", "_").lower() + "-"
    for place in places:
        try:
            names = os.listdir(os.path.dirname(os.path.abspath(place)))
        except OSError:
            continue
        for name in names:
            if name.lower().startswith(wanted) and name.endswith(".dist-info"):
                return name[len(wanted) : -len(".dist-info")]
    return "unknown"


def _open_root(create: bool) -> tuple[int | None, str]:
    """The runtime directory, checked as the budget checks it (``None`` if it does not exist),
    and the cache file's path in it."""
    where = locate()
    if not where.usable:
        raise UsageError(f"no safe runtime directory: {where.finding}")
    root = str(where.root)
    return open_directory(root, None, root, create), f"{root}/{_FILE}"


def _read(dir_fd: int, shown: str) -> tuple[tuple[str, int, int, int] | None, dict[str, Any]]:
    """The file's stamp and its document (empty when missing or corrupt). Raises
    :class:`UsageError` for a file the budget would refuse, ``OSError`` for one unreadable."""
    fd = open_slot(dir_fd, _FILE, shown, OPEN_READ)
    if fd is None:
        return None, {}
    try:
        st = os.fstat(fd)
        data = os.read(fd, _MAX_BYTES + 1)
    finally:
        os.close(fd)
    stamp = (shown, st.st_ino, st.st_mtime_ns, st.st_size)
    try:
        if len(data) > _MAX_BYTES:
            raise ValueError(f"longer than {_MAX_BYTES} bytes")
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ValueError("not a start-up cost cache of this version")
        if not isinstance(document.get("entries"), dict):
            raise ValueError("no entries")
    except (ValueError, RecursionError) as exc:
        log.debug("start-up costs: %s ignored: %s", shown, exc)
        return stamp, {}
    return stamp, document


def _write(dir_fd: int, data: bytes, shown: str) -> tuple[str, int, int, int]:
    temporary = f"{_FILE}.{os.getpid()}.{os.urandom(4).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(temporary, _FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    return (shown, st.st_ino, st.st_mtime_ns, st.st_size)


def _changed(entry: object) -> float:
    when = entry.get("changed") if isinstance(entry, dict) else None
    return float(when) if isinstance(when, (int, float)) and is_seconds(when) else 0.0


def _valid(entry: object) -> dict[str, Figures]:
    """The figures of one entry as read, keeping each kind's only when they make sense."""
    kinds = entry.get("kinds") if isinstance(entry, dict) else None
    if not isinstance(kinds, dict):
        return {}
    found: dict[str, Figures] = {}
    for kind, figures in kinds.items():
        if not isinstance(figures, dict):
            continue
        samples = figures.get("samples")
        if not (isinstance(samples, list) and samples and all(is_seconds(s) for s in samples)):
            continue
        clean: Figures = {"samples": [float(s) for s in samples][-SAMPLES:]}
        recorded = figures.get("recorded")
        clean["recorded"] = recorded if isinstance(recorded, int) and is_seconds(recorded) else 0
        for name in ("imports", "measured", "last"):
            if is_seconds(figures.get(name)):
                clean[name] = float(figures[name])
        if isinstance(figures.get("by"), str):
            clean["by"] = figures["by"][:100]
        found[kind] = clean
    return found
