"""A pytest plugin (``-p tests.support.joblib_suite_plugin``) that runs joblib's own
``joblib/test/test_parallel.py`` on the backend ``"stepdown"``.

It imports ``stepdown`` and nothing else of it, before joblib's test module is collected: that
alone must put ``"stepdown"`` in joblib's ``BACKENDS``, from which the module builds its
parameter lists. Then only the tests parametrized with that backend are kept: by its name, or
by an instance of it (``ALL_VALID_BACKENDS`` holds one of each registered backend, whose test
ids are only ``backend7``). None is excluded: every such test passes for ``"stepdown"``.
"""

from __future__ import annotations

from typing import Any

import pytest

import stepdown  # noqa: F401  (the point: importing stepdown alone registers the name)


def _is_stepdown(value: Any) -> bool:
    if isinstance(value, str):
        return value == "stepdown"
    return type(value).__module__.startswith("stepdown.")


def pytest_configure(config: pytest.Config) -> None:
    for marker in ("thread_unsafe", "no_cover"):  # joblib's own marks, from its conftest
        config.addinivalue_line("markers", f"{marker}: joblib's mark")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        (kept if any(_is_stepdown(value) for value in params) else dropped).append(item)
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept
