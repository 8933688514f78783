"""The joblib backend ``"stepdown"``: ``Parallel`` on the policy's ladder, stepping down mid-run.

::

    Parallel ──submit(batch, callback)──▶ StepdownBackend ──▶ Call of that Parallel call
                                                               │ proxy future ◀── callback
                                                               ▼
                              stepdown.Executor ◀── _Job(batch) (one call per joblib batch)
                                  │ engine: rung, step down, rung, ...   (finished batches kept)
                                  ▼
                   executor future done ──_settle──▶ proxy resolved once ──▶ joblib's callback

Each joblib batch (a ``BatchedCalls``) is one call to a :class:`stepdown.Executor` (see
:mod:`.calls`). One backend instance (:mod:`.backend`) may serve several ``Parallel`` calls (a
``parallel_config`` block): each call has its own :class:`~.calls.Call` and executor, found from
the callback joblib hands us. Large numpy arrays reach process workers as memory maps
(:mod:`.memmap`).

``import stepdown`` alone makes the name known (:mod:`..joblib_name`) and this package loads
when a ``Parallel`` call first uses it. Supported: ``joblib>=1.5,<1.7``
(:data:`~..joblib_name.REQUIREMENT`).
"""

from __future__ import annotations

from typing import Any

import joblib

from ...errors import UsageError
from ...options import Options
from ..joblib_name import OLDEST, REQUIREMENT

_found = tuple(int(part) for part in joblib.__version__.split(".")[:2] if part.isdigit())
if _found < OLDEST:  # before the backend's module: its base classes differ in older joblib
    raise ImportError(
        f"stepdown's joblib backend needs {REQUIREMENT}, and this is joblib "
        f"{joblib.__version__} ({joblib.__file__}): pip install '{REQUIREMENT}'"
    )

from .backend import OPTION_KEYS, StepdownBackend  # noqa: E402  (after the version check)

__all__ = ["StepdownBackend", "register_joblib"]


def register_joblib(name: str = "stepdown", **defaults: Any) -> None:
    """Register :class:`StepdownBackend` with joblib as ``name`` (done on import as "stepdown").

    ``defaults`` are backend options (``ladder``, ``profile``, ...) for every use of that name,
    e.g. ``register_joblib("kaggle", profile="kaggle")``.
    """
    unknown = sorted(set(defaults) - OPTION_KEYS)
    if unknown:
        raise UsageError(
            f"register_joblib: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(OPTION_KEYS))}"
        )
    Options(**defaults)

    def factory(**kwargs: Any) -> StepdownBackend:
        return StepdownBackend(**{**defaults, **kwargs})

    joblib.register_parallel_backend(name, factory if defaults else StepdownBackend)


register_joblib()
