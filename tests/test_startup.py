"""Start-up costs: measured from real pools, cached per user beside the host budget, folded
from observed starts, refused where the budget refuses, and never an error when read."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from stepdown.errors import UsageError
from stepdown.planning.startup import DEFAULTS, Cost, costs, kind_of, measure, record

pytestmark = pytest.mark.timeout(120)

CACHE = ".startup-costs.json"


def runtime() -> Path:
    """This test's own runtime directory (conftest sets XDG_RUNTIME_DIR per test)."""
    return Path(os.environ["XDG_RUNTIME_DIR"]) / "stepdown"


def python(code: str) -> str:
    """What ``code`` prints, run by a fresh interpreter (which must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def costs_elsewhere() -> dict[str, dict[str, object]]:
    """costs() as a fresh process on this host sees them."""
    figures: dict[str, dict[str, object]] = json.loads(
        python(
            "import json, dataclasses; from stepdown.planning.startup import costs; "
            "print(json.dumps({k: dataclasses.asdict(c) for k, c in costs().items()}))"
        )
    )
    return figures


def default(kind: str) -> Cost:
    start, imports = DEFAULTS[kind]
    return Cost(start, imports, "default: not measured on this host")


# ---- the cache -------------------------------------------------------------------------------


def test_nothing_cached_gives_the_defaults_and_creates_nothing() -> None:
    found = costs()
    assert set(found) == set(DEFAULTS)
    assert found["loky"] == default("loky")
    assert found["sequential"] == Cost(0.0, 0.0, "nothing to start")
    assert not (runtime() / CACHE).exists()


def test_recorded_starts_round_trip_through_a_private_file() -> None:
    for seconds in (0.02, 0.04, 0.03):
        record("fork", seconds)
    mine = costs()["fork"]
    assert mine.start == pytest.approx(0.03)  # the median
    assert mine.imports == DEFAULTS["fork"][1]
    assert mine.source.startswith("recorded on the fly, 3 starts (last ")
    assert costs()["spawn"] == default("spawn")
    path = runtime() / CACHE
    assert path.stat().st_mode & 0o777 == 0o600
    assert runtime().stat().st_mode & 0o777 == 0o700
    elsewhere = costs_elsewhere()["fork"]
    assert elsewhere["start"] == pytest.approx(0.03) and elsewhere["source"] == mine.source
    assert [p.name for p in runtime().iterdir()] == [CACHE]  # no temporary file left behind


def test_a_change_by_another_process_is_seen() -> None:
    record("loky", 0.2)
    assert costs()["loky"].start == pytest.approx(0.2)
    python("from stepdown.planning.startup import record; record('loky', 0.4)")
    assert costs()["loky"].start == pytest.approx(0.3)
    (runtime() / CACHE).unlink()
    assert costs()["loky"] == default("loky")


def test_folding_keeps_the_last_five_and_ignores_nonsense(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="stepdown")
    for seconds in (9.0, 9.0, 9.0, 0.01, 0.02, 0.03, 0.04, 0.05):
        record("forkserver", seconds)
    for bad in (math.nan, math.inf, -1.0, "0.1", True):
        record("forkserver", bad)  # type: ignore[arg-type]
    found = costs()["forkserver"]
    assert found.start == pytest.approx(0.03)
    assert found.source.startswith("recorded on the fly, 8 starts")
    assert "ignored record('forkserver', nan)" in caplog.text
    stored = json.loads((runtime() / CACHE).read_text())
    [entry] = stored["entries"].values()
    assert entry["kinds"]["forkserver"]["samples"] == [0.01, 0.02, 0.03, 0.04, 0.05]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"format": 1, "entries": []}',
        b'{"format": 99, "entries": {}}',
        b"[" * 100_000,
    ],
)
def test_a_corrupt_cache_is_ignored_then_replaced(
    content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="stepdown")
    runtime().mkdir(mode=0o700)
    (runtime() / CACHE).write_bytes(content)
    assert costs()["fork"] == default("fork")
    assert "ignored" in caplog.text
    record("fork", 0.02)
    assert costs()["fork"].start == pytest.approx(0.02)
    assert json.loads((runtime() / CACHE).read_text())["format"] == 1


def test_figures_that_make_no_sense_are_dropped_kind_by_kind() -> None:
    record("fork", 0.02)
    path = runtime() / CACHE
    stored = json.loads(path.read_text())
    [entry] = stored["entries"].values()
    entry["kinds"]["spawn"] = {"samples": [0.1, "x"]}
    entry["kinds"]["loky"] = {"samples": [-1.0]}
    entry["kinds"]["thread"] = {"samples": []}
    entry["kinds"]["forkserver"] = {"samples": [0.3], "imports": "a lot", "recorded": -3}
    path.write_text(json.dumps(stored))
    found = costs_elsewhere()
    for kind in ("spawn", "loky", "thread"):
        assert found[kind]["source"] == "default: not measured on this host", kind
    assert found["forkserver"]["start"] == pytest.approx(0.3)
    assert found["forkserver"]["imports"] == DEFAULTS["forkserver"][1]
    assert found["fork"]["start"] == pytest.approx(0.02)


def test_figures_of_another_interpreter_are_not_used() -> None:
    record("fork", 0.02)
    path = runtime() / CACHE
    stored = json.loads(path.read_text())
    [(key, entry)] = stored["entries"].items()
    stored["entries"] = {key.replace("cpus=", "cpus=1"): entry}
    path.write_text(json.dumps(stored))
    assert costs_elsewhere()["fork"]["source"] == "default: not measured on this host"


# ---- refused as the budget refuses -------------------------------------------------------------


def _world_writable(root: Path, path: Path) -> None:
    root.chmod(0o777)


def _linked_file(root: Path, path: Path) -> None:
    target = root.parent / "elsewhere.json"
    path.rename(target)
    path.symlink_to(target)


def _linked_root(root: Path, path: Path) -> None:
    real = root.parent / "real"
    root.rename(real)
    root.symlink_to(real)


def _foreign_file(root: Path, path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(path, 65534, 65534)


@pytest.mark.parametrize(
    ("make_unsafe", "problem"),
    [
        (_world_writable, "world-writable"),
        (_linked_file, "is a symbolic link"),
        (_linked_root, "is a symbolic link"),
        (_foreign_file, "owned by uid 65534"),
    ],
)
def test_an_unsafe_place_is_refused_never_an_error(
    make_unsafe: object, problem: str, warnings_log: pytest.LogCaptureFixture
) -> None:
    record("fork", 0.02)
    root, path = runtime(), runtime() / CACHE
    assert callable(make_unsafe)
    make_unsafe(root, path)
    before = path.read_bytes()
    assert costs_elsewhere()["fork"]["source"] == "default: not measured on this host"
    record("fork", 0.5)  # refused quietly: the file is not written
    assert path.read_bytes() == before
    measured = measure(["thread"], repeat=1)
    assert measured["thread"].source.startswith("measured ")
    assert f"start-up costs measured but not stored: host budget: {root}" in warnings_log.text
    assert problem in warnings_log.text
    assert path.read_bytes() == before


def test_a_symbolic_link_is_never_followed_to_write() -> None:
    runtime().mkdir(mode=0o700)
    target = runtime().parent / "precious"
    target.write_text("keep me")
    (runtime() / CACHE).symlink_to(target)
    record("fork", 0.02)
    assert target.read_text() == "keep me"
    assert (runtime() / CACHE).is_symlink()


# ---- measuring -------------------------------------------------------------------------------


def test_measure_times_real_pools_and_stores_them() -> None:
    found = measure(["fork", "thread"], repeat=1, by="the test")
    assert set(found) == {"fork", "thread"}
    for cost in found.values():
        assert 0 < cost.start < math.inf and 0 < cost.imports < math.inf
        assert cost.source.startswith("measured ") and cost.source.endswith(" by the test")
    assert costs()["fork"] == found["fork"]
    assert costs_elsewhere()["thread"]["source"] == found["thread"].source
    record("fork", 0.5)
    assert costs()["fork"].source.endswith("by the test, then 1 start recorded")


def test_a_kind_that_cannot_be_measured_keeps_its_cost_and_says_why() -> None:
    # conftest registers the toy backend in this process only: the measuring process has
    # never heard of it, so its start fails there, as a missing backend's would.
    found = measure(["toy"], repeat=1)
    assert found["toy"].source.startswith("not measured: UsageError: unknown start kind 'toy'")
    assert "toy" not in costs()


def test_measure_refuses_what_it_cannot_measure() -> None:
    with pytest.raises(UsageError, match=r"unknown start kind 'sequential'; known kinds: .*loky"):
        measure(["sequential"])
    with pytest.raises(UsageError, match="workers must be a whole number >= 1, not 0"):
        measure(["thread"], workers=0)
    assert not (runtime() / CACHE).exists()


def test_kind_of_maps_rungs_to_kinds() -> None:
    import multiprocessing

    assert kind_of("process", "spawn") == "spawn"
    assert kind_of("process", "forkserver") == "forkserver"
    default_method = multiprocessing.get_start_method(allow_none=True)
    assert kind_of("process") == (default_method or multiprocessing.get_all_start_methods()[0])
    assert kind_of("process", "auto") == kind_of("process")
    assert kind_of("loky") == kind_of("loky", "auto") == "loky"
    assert kind_of("thread") == "thread"
    assert kind_of("sequential") == "sequential"
    assert kind_of("ray") == "ray"
    with pytest.raises(UsageError, match="unknown backend 'lokyy'"):
        kind_of("lokyy")


def test_reading_costs_starts_nothing_and_imports_no_backend() -> None:
    record("loky", 0.1)
    code = (
        "import sys, multiprocessing; from stepdown.planning.startup import costs, kind_of; "
        "costs(); kind_of('process'); "
        "print(sorted(m for m in ('loky', 'ray', 'concurrent.futures.process', 'subprocess') "
        "if m in sys.modules), multiprocessing.get_start_method(allow_none=True), "
        "len(multiprocessing.active_children()))"
    )
    assert python(code).split() == ["[]", "None", "0"]


def test_a_module_function_reaches_forked_workers_without_cloudpickle() -> None:
    """A plain function of an importable module is a reference: the standard pickle ships it.
    A lambda of the same script still goes by value (cloudpickle), and both run in workers."""
    code = (
        "import os, sys, stepdown\n"
        "from tests.support.tasks import square\n"
        "fork = [{'backend': 'process', 'workers': 2, 'start_method': 'fork'}]\n"
        "print(stepdown.map(square, range(6), ladder=fork), 'cloudpickle' in sys.modules)\n"
        "pids = set(stepdown.map(lambda x: os.getpid(), range(6), ladder=fork))\n"
        "print(os.getpid() not in pids, 'cloudpickle' in sys.modules)\n"
    )
    assert python(code).splitlines() == ["[0, 1, 4, 9, 16, 25] False", "True True"]


def test_a_first_map_imports_none_of_the_modules_it_does_without() -> None:
    """What a cold script's first ``stepdown.map`` no longer imports, each a few ms of its
    start and objects its exit walks again: ``dataclasses`` with ``inspect`` and ``ast``
    (records.py), ``pathlib`` (strings on a run's path), a TOML reader (the built-in policy's
    JSON twin), ``cloudpickle`` (a module's function is a reference)."""
    code = (
        "import sys, stepdown\n"
        "fork = [{'backend': 'process', 'workers': 2, 'start_method': 'fork'}]\n"
        "assert stepdown.map(abs, range(-3, 3), ladder=fork) == [3, 2, 1, 0, 1, 2]\n"
        "assert stepdown.map(abs, range(-3, 3)) == [3, 2, 1, 0, 1, 2]\n"
        "avoided = {'dataclasses', 'inspect', 'ast', 'pathlib', 'tomllib', 'cloudpickle'}\n"
        "print(sorted(avoided & set(sys.modules)))\n"
    )
    assert python(code).strip() == "[]"


def test_a_module_registered_to_go_by_value_still_goes_by_value() -> None:
    """Once cloudpickle is imported, it decides: a module registered with
    ``register_pickle_by_value`` (code a Ray cluster's nodes lack) is shipped, not named."""
    import cloudpickle

    from stepdown.runner.batch import dumps_function

    from tests.support import tasks

    named = dumps_function(tasks.square)
    cloudpickle.register_pickle_by_value(tasks)
    try:
        shipped = dumps_function(tasks.square)
    finally:
        cloudpickle.unregister_pickle_by_value(tasks)
    assert b"cloudpickle" not in named  # a reference: module and name
    assert b"cloudpickle" in shipped  # the code itself, rebuilt by cloudpickle in the worker
    assert pickle.loads(shipped)[0](7) == 49


def test_every_cold_pool_start_is_recorded_and_a_warm_one_is_not() -> None:
    import stepdown

    assert costs()["fork"].source.startswith("default")
    stepdown.map(abs, range(10), ladder=[{"backend": "process", "start_method": "fork"}])
    stepdown.map(abs, range(10), ladder=[{"backend": "process", "start_method": "fork"}])
    fork = costs()["fork"]
    assert fork.source.startswith("recorded on the fly, 1 start"), fork.source
    assert 0 < fork.start < 60
    stepdown.map(abs, range(10), ladder=["thread:2"])  # in the caller: nothing to record
    assert costs()["thread"].source.startswith("default")
