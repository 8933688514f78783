"""joblib knows the backend name ``"stepdown"`` once stepdown is imported, in either order,
and in joblib's own worker processes too; ``import stepdown`` never imports joblib for it.

::

    import stepdown ──▶ watch() ── joblib imported? ── yes ──▶ register()
                                        │ no
                                        ▼
                  _Finder first on sys.meta_path ── import joblib ──▶ joblib's own loader runs,
                  then register(); the finder leaves sys.meta_path

    register(): BACKENDS["stepdown"] = a factory that imports the backend on first use, and each
    joblib batch sent to a loky worker carries rebuild_batch (below)

A forked worker inherits the name. A loky worker is a fresh interpreter that imports only what
it unpickles: a batch pickled by a process where stepdown is imported is rebuilt by
:func:`rebuild_batch`, so unpickling it imports stepdown (and registers the name) before the batch
runs, and a task's own ``Parallel(backend="stepdown")`` resolves there as well.

Thread safety: ``find_spec`` and the loader run under the import lock of ``joblib``, and
:func:`register` only sets the same values again when two threads reach it.
"""

from __future__ import annotations

import sys

# Not typing.TYPE_CHECKING: importing typing costs more than this module (import stepdown runs it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any
else:
    Loader = object  # importing importlib.abc would cost more than this whole module

__all__ = ["NAME", "OLDEST", "REQUIREMENT", "rebuild_batch", "register", "watch"]

NAME = "stepdown"
# joblib 1.5 made backends implement submit() and retrieve_result_callback() (apply_async
# before); the backend API (joblib._parallel_backends) and the memmapping helpers the backend
# uses are marked experimental or private by joblib: hence the upper bound, the newest tested.
OLDEST = (1, 5)
REQUIREMENT = "joblib>=1.5,<1.7"


def watch() -> None:
    """Register the name now if joblib is imported, else as soon as joblib is imported."""
    if "joblib" in sys.modules:
        _register_or_warn()
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def register() -> None:
    """Make ``"stepdown"`` a joblib backend name (unless a ``register_joblib`` call already
    did), and send joblib's batches to loky workers through :func:`rebuild_batch`."""
    # Waits for an import of joblib under way in another thread: its names exist after it.
    from joblib.externals.loky.backend import reduction
    from joblib.parallel import BACKENDS, BatchedCalls, register_parallel_backend

    if NAME not in BACKENDS:
        register_parallel_backend(NAME, _backend)
    reduction.register(BatchedCalls, _reduce_batch)


def _backend(**options: Any) -> Any:
    """The registered factory: the backend's module (and its dependencies, ~75 ms) loads when a
    Parallel call first names ``"stepdown"``, not when joblib or stepdown is imported."""
    from .joblib.backend import StepdownBackend

    return StepdownBackend(**options)


def _reduce_batch(batch: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    rebuild, args = batch.__reduce__()
    return rebuild_batch, (rebuild, args)


def rebuild_batch(rebuild: Callable[..., Any], args: Sequence[Any]) -> Any:
    """Rebuild a joblib batch in a worker. Importing this module imported stepdown, which
    registered the name: a task's own ``Parallel(backend="stepdown")`` finds it."""
    return rebuild(*args)


class _Finder:
    """Finds nothing itself: when joblib is about to be imported it lends joblib's loader a
    wrapper that registers the name once joblib's own code has run."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "joblib":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is None:
                continue
            if hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader, self)
            return spec
        return None  # joblib is not installed: the import fails as it would without us


class _Loader(Loader):
    """joblib's loader, then :func:`register`; joblib keeps its own loader afterwards (for
    ``importlib.reload``, resources and tracebacks)."""

    def __init__(self, loader: Any, finder: _Finder) -> None:
        self.loader = loader
        self.finder = finder

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        try:
            self.loader.exec_module(module)
        finally:
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader
        # Only once joblib imported: a failed import leaves the finder for the next attempt.
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        _register_or_warn()


def _register_or_warn() -> None:
    """:func:`register`, where a joblib it cannot work with must not make ``import joblib`` or
    ``import stepdown`` fail: a warning names the cause instead."""
    try:
        register()
    except Exception as exc:
        import warnings

        import joblib

        warnings.warn(
            f"stepdown could not register the joblib backend {NAME!r} with joblib "
            f"{getattr(joblib, '__version__', '?')} ({exc!r}); pip install '{REQUIREMENT}'",
            RuntimeWarning,
            stacklevel=2,
        )
