"""Memmapping large numpy arrays for process rungs, as joblib's loky backend does.

Each array larger than ``max_nbytes`` is dumped once per Parallel call into a private folder and
opened in the workers as a memory map. joblib's helpers for this are private; without them
(another joblib) arrays are pickled, as any object is.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import sys
import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

import cloudpickle

from ...planning.rung import Rung

__all__ = ["Memmapper"]

try:
    from joblib._memmapping_reducer import (
        _get_backing_memmap,
        _get_temp_dir,
        _reduce_memmap_backed,
    )
    from joblib.numpy_pickle import dump as _dump_array
    from joblib.numpy_pickle import load_temporary_memmap
except ImportError:  # a joblib without these helpers: arrays are pickled, as for any object
    _MEMMAP_HELPERS = False
else:
    _MEMMAP_HELPERS = True


class Memmapper:
    """Sends numpy arrays larger than ``max_nbytes`` to worker processes as memory maps.

    Each array is dumped once per Parallel call into a private folder (``temp_folder``,
    ``JOBLIB_TEMP_FOLDER``, ``/dev/shm`` or the temp dir, as joblib chooses) and opened in the
    workers with ``mmap_mode``; an array already backed by a memory map is reopened from its
    file. The folder is removed when the call has ended and nothing of it is in flight.
    Thread and sequential rungs never pickle: they see the caller's arrays themselves.
    """

    def __init__(self, max_nbytes: int, mmap_mode: str, temp_folder: str | None) -> None:
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self.temp_folder = temp_folder
        self.folder: str | None = None
        self._files: dict[int, tuple[weakref.ref[Any], str]] = {}
        self._lock = threading.Lock()
        self._cleanup: weakref.finalize[Any, Any] | None = None

    @classmethod
    def create(
        cls, max_nbytes: int | None, mmap_mode: str, temp_folder: str | None, rungs: Sequence[Rung]
    ) -> Memmapper | None:
        """A memmapper for a call whose ladder has a process rung, or ``None``."""
        if max_nbytes is None or not _MEMMAP_HELPERS:
            return None
        if all(rung.in_process for rung in rungs):
            return None
        return cls(max_nbytes, mmap_mode, temp_folder)

    def dumps(self, obj: Any) -> bytes:
        buffer = io.BytesIO()
        _Pickler(buffer, self).dump(obj)
        return buffer.getvalue()

    def reduce(self, array: Any) -> tuple[Any, ...] | None:
        """How to send ``array``, or None to pickle it by value."""
        numpy = sys.modules["numpy"]
        backing = _get_backing_memmap(array)
        if isinstance(backing, numpy.memmap) and backing.filename:
            reduced: tuple[Any, ...] = _reduce_memmap_backed(array, backing)
            return reduced
        if array.dtype.hasobject or array.nbytes <= self.max_nbytes:
            return None
        return (load_temporary_memmap, (self._dump(array), self.mmap_mode, False))

    def _dump(self, array: Any) -> str:
        with self._lock:
            known = self._files.get(id(array))
            if known is not None and known[0]() is array:
                return known[1]
            if self.folder is None:
                name = f"stepdown_joblib_{os.getpid()}_{uuid.uuid4().hex}"
                self.folder = _get_temp_dir(name, self.temp_folder)[0]
                os.makedirs(self.folder, mode=0o700, exist_ok=True)
                # Removed at exit even if the call never ends (an abandoned generator).
                self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
            filename = os.path.join(self.folder, f"{uuid.uuid4().hex}.pkl")
            _dump_array(array, filename)
            self._files[id(array)] = (weakref.ref(array), filename)
            return filename

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with numpy arrays sent as memory maps by a :class:`Memmapper`."""

    def __init__(self, file: io.BytesIO, memmapper: Memmapper) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._memmapper = memmapper
        self._numpy = sys.modules["numpy"]

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is self._numpy.ndarray or kind is self._numpy.memmap:
            reduced = self._memmapper.reduce(obj)
            if reduced is not None:
                return reduced
        return super().reducer_override(obj)
