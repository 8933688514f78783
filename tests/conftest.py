"""Shared fixtures. Helpers (real faults, cgroups, tasks, a toy backend): ``tests/support``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from stepdown.runner import pools

from tests.support import cgroups
from tests.support.toy import register_toy

# A backend added through the registry alone runs the same contract as the built-in ones.
register_toy()

# Every local backend, each as a one-rung ladder (sequential is appended by the runner).
BACKEND_LADDERS = {
    "sequential": ["sequential"],
    "thread": ["thread:2"],
    "process-fork": [{"backend": "process", "workers": 2, "start_method": "fork"}],
    "process-forkserver": [{"backend": "process", "workers": 2, "start_method": "forkserver"}],
    "loky": ["loky:2"],
    "toy": ["toy:2"],
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


@pytest.fixture(autouse=True)
def _own_budget(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test has a host budget of its own (the budget is on in every profile): what a test
    runs, and its child processes, never find the slots held by another test's. Tests of several
    instances give them one runtime directory of their own."""
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


@pytest.fixture
def warnings_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="stepdown")
    return caplog


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_cgroups() -> Iterator[None]:
    """Remove test cgroups left behind by a crashed earlier run."""
    cgroups.cleanup_leftovers()
    yield
    cgroups.cleanup_leftovers()
