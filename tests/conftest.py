"""Shared fixtures. Fault helpers (cgroups, ENOMEM at fork, ...) live in ``tests/faults.py``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from stepdown.core import pools

import faults

# Every local backend, each as a one-rung ladder (sequential is appended by the runner).
BACKEND_LADDERS = {
    "sequential": ["sequential"],
    "thread": ["thread:2"],
    "process-fork": [{"backend": "process", "workers": 2, "start_method": "fork"}],
    "process-forkserver": [{"backend": "process", "workers": 2, "start_method": "forkserver"}],
    "loky": ["loky:2"],
}


@pytest.fixture(params=sorted(BACKEND_LADDERS))
def ladder(request: pytest.FixtureRequest) -> list[object]:
    """Each local backend in turn."""
    return BACKEND_LADDERS[request.param]


@pytest.fixture(autouse=True)
def _cold_pools() -> Iterator[None]:
    """Each test starts with no warm executor kept from another test."""
    yield
    pools.shutdown_all()


@pytest.fixture
def warnings_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="stepdown")
    return caplog


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_cgroups() -> Iterator[None]:
    """Remove test cgroups left behind by a crashed earlier run."""
    faults.cleanup_leftovers()
    yield
    faults.cleanup_leftovers()
