"""The host budget, with real processes and real flock locks: nothing here is mocked."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import multiprocessing
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from stepdown.budget.budget import Budget
from stepdown.budget.grant import Grant
from stepdown.budget.slots import runtime_root
from stepdown.errors import StepdownError, UsageError

pytestmark = pytest.mark.timeout(60)

CTX = multiprocessing.get_context("fork")
GiB = 1024**3


# ---- helpers run in child processes ----------------------------------------------------------


def _hold(
    root: str, size: int, n: int, memory: int, fork_child: bool, conn: Connection, other: Connection
) -> None:
    """Hold ``n`` slots until told to release (or until the test process goes away)."""
    other.close()
    budget = Budget(size, name="t", root=root)
    grant = budget.acquire(n, memory_per_slot=memory, label="holder")
    grandchild = None
    if fork_child:
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(60)
            os._exit(0)
    conn.send({"count": grant.count, "reserved": budget.reserved_memory(), "child": grandchild})
    with contextlib.suppress(EOFError):
        conn.recv()
    grant.release()
    conn.send("released")


class Holder:
    """Another process holding slots of budget ``t`` under ``root``."""

    def __init__(
        self, root: Path, n: int, *, size: int, memory: int = 0, fork_child: bool = False
    ) -> None:
        self.conn, child_end = CTX.Pipe()
        self.process = CTX.Process(
            target=_hold,
            args=(str(root), size, n, memory, fork_child, child_end, self.conn),
        )
        self.process.start()
        child_end.close()
        assert self.conn.poll(20), "the holder did not report"
        self.info: dict[str, Any] = self.conn.recv()

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def release(self) -> None:
        self.conn.send("release")
        assert self.conn.recv() == "released"
        self.process.join(10)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        # not join(): a grandchild that inherited the process sentinel would keep it open
        deadline = time.monotonic() + 10
        while self.process.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.process.exitcode == -signal.SIGKILL

    def close(self) -> None:
        if self.process.is_alive():
            self.kill()
        self.conn.close()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.close()


def _race(
    root: str, size: int, rounds: int, chaos: float, barrier: Any, counter: Any, peak: Any, out: Any
) -> None:
    """Barriered rounds (acquire / everyone reads status / release), then a free-for-all."""
    budget = Budget(size, name="race", root=root)
    rng = random.Random(os.getpid())
    seen = []

    def took(grant: Grant) -> None:
        with counter.get_lock():
            counter.value += grant.count
            peak.value = max(peak.value, counter.value)

    def giving_back(grant: Grant) -> None:
        with counter.get_lock():
            counter.value -= grant.count

    for _ in range(rounds):
        barrier.wait(30)
        grant = budget.acquire(rng.randint(1, 3), label="racer")
        took(grant)
        barrier.wait(30)  # every grant of this round is made; nobody has released
        seen.append((grant.count, budget.status().held_in_budget))
        barrier.wait(30)
        giving_back(grant)
        grant.release()
    deadline = time.monotonic() + chaos
    while time.monotonic() < deadline:
        with budget.acquire(rng.randint(1, 3), wait=rng.choice([0, 0.05])) as grant:
            took(grant)
            held = budget.status().held_in_budget
            assert held <= size
            time.sleep(rng.uniform(0, 0.003))
            giving_back(grant)
    out.put(seen)


def _raw_hold(paths: list[str], content: bytes, conn: Connection, other: Connection) -> None:
    """Lock slot files directly, leaving ``content`` in them: not a stepdown instance."""
    other.close()
    fds = []
    for path in paths:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, content)
        fds.append(fd)
    conn.send("held")
    with contextlib.suppress(EOFError):
        conn.recv()


def _in_forked_child(budget: Budget, grant: Grant, conn: Connection) -> None:
    grant.release()  # inert here: the grant belongs to the parent
    status = budget.status()
    others = sum(s.memory for s in status.held if not s.mine)
    conn.send(([s.pid for s in status.held], [s.mine for s in status.held], others))


# ---- concurrency -----------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_grants_never_exceed_the_budget_under_concurrent_acquirers(tmp_path: Path) -> None:
    size, racers, rounds = 4, 12, 5
    barrier = CTX.Barrier(racers)
    counter = CTX.Value("i", 0)
    peak = CTX.Value("i", 0)
    out = CTX.Queue()
    processes = [
        CTX.Process(
            target=_race, args=(str(tmp_path), size, rounds, 1.0, barrier, counter, peak, out)
        )
        for _ in range(racers)
    ]
    for process in processes:
        process.start()
    results = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(10)
        assert process.exitcode == 0
    assert peak.value <= size
    assert peak.value == size  # 12 racers asking for 1-3 each fill the budget
    for r in range(rounds):
        counts = [seen[r][0] for seen in results]
        assert sum(counts) == size, f"round {r}: grants {counts}"
        # read by every racer while all of this round's grants were held
        assert {seen[r][1] for seen in results} == {size}
    status = Budget(size, name="race", root=tmp_path).status()
    assert status.held == ()
    assert status.reserved_memory == 0
    assert Budget(size, name="race", root=tmp_path).acquire(size).count == size


def test_threads_of_one_process_never_share_a_slot(tmp_path: Path) -> None:
    budget = Budget(4, root=tmp_path)
    barrier = threading.Barrier(10)
    grants: list[Grant] = []
    lock = threading.Lock()

    def take() -> None:
        barrier.wait(10)
        grant = budget.acquire(2)
        with lock:
            grants.append(grant)

    threads = [threading.Thread(target=take) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    names = [name for grant in grants for name in grant.slots]
    assert sorted(names) == [f"slot-{i}" for i in range(4)]
    assert budget.status().held_in_budget == 4
    for grant in grants:
        grant.release()
    assert budget.status().held == ()


# ---- holders that die ------------------------------------------------------------------------


def test_a_holder_killed_with_sigkill_frees_its_slots(
    tmp_path: Path, holders: list[Holder]
) -> None:
    holder = Holder(tmp_path, 3, size=3)
    holders.append(holder)
    budget = Budget(3, name="t", root=tmp_path)
    assert holder.info["count"] == 3
    assert budget.acquire(1).count == 0
    assert budget.status().pids == (holder.pid,)
    holder.kill()
    with budget.acquire(3) as grant:
        assert grant.count == 3
    assert budget.status().held == ()  # its stale records do not count: only locks do


def test_a_forked_child_does_not_keep_a_dead_holders_slots(
    tmp_path: Path, holders: list[Holder]
) -> None:
    holder = Holder(tmp_path, 2, size=2, fork_child=True)
    holders.append(holder)
    grandchild = holder.info["child"]
    try:
        holder.kill()
        os.kill(grandchild, 0)  # still alive, and it inherited the slot descriptors
        assert Budget(2, name="t", root=tmp_path).acquire(2).count == 2
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_a_grant_is_inert_in_a_forked_child(tmp_path: Path) -> None:
    budget = Budget(2, root=tmp_path)
    with budget.acquire(2, memory_per_slot=100) as grant:
        parent_end, child_end = CTX.Pipe()
        child = CTX.Process(target=_in_forked_child, args=(budget, grant, child_end))
        child.start()
        child_end.close()
        pids, mine, reserved = parent_end.recv()
        child.join(10)
        assert pids == [os.getpid(), os.getpid()]
        assert mine == [False, False]  # the parent's, seen from the child
        assert reserved == 200
        assert budget.status().held_in_budget == 2  # the child's release() did nothing
        assert grant.count == 2
    assert budget.status().held == ()


# ---- memory reservations ---------------------------------------------------------------------


def test_reserved_memory_counts_other_processes_only(tmp_path: Path, holders: list[Holder]) -> None:
    holder = Holder(tmp_path, 2, size=4, memory=GiB)
    holders.append(holder)
    assert holder.info["reserved"] == 0  # the holder does not count its own
    budget = Budget(4, name="t", root=tmp_path)
    # What the holder already uses (its RSS) is in the probe's free memory already: only the
    # rest of its reservation is subtracted again.
    assert 2 * GiB - GiB // 4 < budget.reserved_memory() < 2 * GiB
    with budget.acquire(1, memory_per_slot=5 * GiB):
        assert 2 * GiB - GiB // 4 < budget.reserved_memory() < 2 * GiB
        assert budget.status().reserved_memory == 7 * GiB
    slots = {s.slot: s for s in budget.status().held}
    assert {s.pid for s in slots.values()} == {holder.pid}
    assert {s.label for s in slots.values()} == {"holder"}
    assert all(s.started is not None and abs(s.started - time.time()) < 60 for s in slots.values())
    holder.release()
    assert budget.reserved_memory() == 0


def test_update_rewrites_the_reservation(tmp_path: Path) -> None:
    budget = Budget(2, root=tmp_path)
    with budget.acquire(2, memory_per_slot=10, label="loky(2)") as grant:
        grant.update(memory_per_slot=30, label="thread(2)")
        held = budget.status().held
        assert [(s.memory, s.label) for s in held] == [(30, "thread(2)")] * 2
        record = json.loads((tmp_path / "default" / "slot-0").read_text())
        assert record["pid"] == os.getpid()
        assert record["memory"] == 30
    assert (tmp_path / "default" / "slot-0").read_text() == ""  # no stale record left behind


# ---- waiting, guaranteed slots, giving back -------------------------------------------------


def test_wait_gets_a_slot_once_the_holder_releases(tmp_path: Path, holders: list[Holder]) -> None:
    holder = Holder(tmp_path, 2, size=2)
    holders.append(holder)
    budget = Budget(2, name="t", root=tmp_path)
    releaser = threading.Timer(0.5, holder.release)
    releaser.start()
    began = time.monotonic()
    try:
        grant = budget.acquire(1, wait=2)
    finally:
        releaser.join()
    elapsed = time.monotonic() - began
    assert grant.count == 1
    assert 0.4 <= elapsed < 1.5
    grant.release()


def test_wait_gives_up_after_its_time(tmp_path: Path, holders: list[Holder]) -> None:
    holders.append(Holder(tmp_path, 1, size=1))
    began = time.monotonic()
    grant = Budget(1, name="t", root=tmp_path).acquire(1, wait=0.3)
    assert grant.count == 0
    assert 0.3 <= time.monotonic() - began < 1.0


def test_a_guaranteed_slot_exceeds_a_full_budget(tmp_path: Path, holders: list[Holder]) -> None:
    holder = Holder(tmp_path, 2, size=2)
    holders.append(holder)
    budget = Budget(2, name="t", root=tmp_path)
    assert budget.acquire(1).count == 0
    with budget.acquire(1, guaranteed=True, memory_per_slot=GiB, label="sequential") as grant:
        assert grant.count == 1
        assert grant.over_budget
        status = budget.status()
        assert status.held_in_budget == 2
        assert status.free == 0
        over = [s for s in status.held if s.over_budget]
        assert [(s.slot, s.mine, s.memory) for s in over] == [("over-0", True, GiB)]
        # the other instance sees the reservation
        parent_end, child_end = CTX.Pipe()
        reader = CTX.Process(target=_in_forked_child, args=(budget, grant, child_end))
        reader.start()
        child_end.close()
        assert parent_end.recv()[2] == GiB
        reader.join(10)
    assert budget.status().held_in_budget == 2


def test_a_guaranteed_grant_takes_a_real_slot_when_one_is_free(tmp_path: Path) -> None:
    with Budget(2, root=tmp_path).acquire(1, guaranteed=True) as grant:
        assert grant.slots == ("slot-0",)
        assert not grant.over_budget


def test_shrink_and_release(tmp_path: Path) -> None:
    budget = Budget(4, root=tmp_path)
    grant = budget.acquire(3)
    assert grant.count == 3
    grant.shrink(1)
    assert grant.count == 1
    assert not grant.released
    assert budget.status().held_in_budget == 1
    assert budget.acquire(5).count == 3
    with pytest.raises(UsageError, match="shrink to 0..1"):
        grant.shrink(2)
    grant.release()
    grant.release()
    assert grant.released
    assert grant.count == 0
    gc.collect()
    assert budget.status().held == ()


def test_an_unreleased_grant_is_freed_when_collected(tmp_path: Path) -> None:
    budget = Budget(2, root=tmp_path)
    budget.acquire(2)  # dropped at once
    gc.collect()
    assert budget.status().held == ()


def test_zero_slots_asked_is_an_empty_grant(tmp_path: Path) -> None:
    with Budget(2, root=tmp_path).acquire(0) as grant:
        assert grant.count == 0


def test_the_grant_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stepdown")
    budget = Budget(3, root=tmp_path)
    with budget.acquire(2), budget.acquire(3):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "stepdown"]
    pid = os.getpid()
    assert lines == [
        f"budget: asked for 2 worker slots, granted 2 (2 of 3 held by pids {pid})",
        f"budget: asked for 3 worker slots, granted 1 (3 of 3 held by pids {pid})",
    ]


# ---- what other instances leave behind -------------------------------------------------------


def test_garbage_and_missing_slot_files_never_raise(tmp_path: Path) -> None:
    budget = Budget(4, root=tmp_path)
    assert budget.status().held == ()  # nothing there yet, and nothing is created
    assert not tmp_path.joinpath("default").exists()
    assert budget.reserved_memory() == 0
    budget.acquire(1).release()
    directory = tmp_path / "default"
    held = [str(directory / "slot-0"), str(directory / "slot-2")]
    garbage = b"[" * 3000 + b"\xff\xfe{not json"
    (directory / "slot-1").write_bytes(b'{"pid": "x", "memory": -5}')  # free: ignored
    (directory / "slot-7").write_bytes(b"\x00\x01")  # beyond the size: read, free
    parent_end, child_end = CTX.Pipe()
    raw = CTX.Process(target=_raw_hold, args=(held, garbage, child_end, parent_end))
    raw.start()
    child_end.close()
    try:
        assert parent_end.recv() == "held"
        status = budget.status()
        assert [(s.slot, s.pid, s.memory, s.label) for s in status.held] == [
            ("slot-0", None, 0, ""),
            ("slot-2", None, 0, ""),
        ]
        assert budget.reserved_memory() == 0
        with budget.acquire(4) as grant:
            assert grant.slots == ("slot-1", "slot-3")
            assert json.loads((directory / "slot-1").read_text())["pid"] == os.getpid()
    finally:
        parent_end.close()
        raw.join(10)


# ---- an unsafe directory is refused ----------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("level", ["root", "budget"])
def test_a_directory_of_another_user_is_refused(tmp_path: Path, level: str) -> None:
    budget = Budget(2, root=tmp_path / "run")
    budget.acquire(1).release()
    target = budget.root if level == "root" else budget.directory
    os.chown(target, 65534, 65534)
    for call in (lambda: budget.acquire(1), budget.status):
        with pytest.raises(UsageError, match="owned by uid 65534") as info:
            call()
        assert str(target) in str(info.value)
    assert budget.to_dict()["error"] is not None


def test_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    budget = Budget(2, root=tmp_path / "run")
    budget.acquire(1).release()
    budget.directory.chmod(0o777)
    with pytest.raises(UsageError, match="world-writable") as info:
        budget.acquire(1)
    assert str(budget.directory) in str(info.value)
    assert "chmod 700" in str(info.value)


@pytest.mark.parametrize("level", ["root", "budget"])
def test_a_symlinked_directory_is_refused(tmp_path: Path, level: str) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    budget = Budget(2, root=tmp_path / "run")
    if level == "root":
        budget.root.symlink_to(real)
    else:
        budget.root.mkdir(mode=0o700)
        budget.directory.symlink_to(real)
    link = budget.root if level == "root" else budget.directory
    for call in (lambda: budget.acquire(1), budget.status):
        with pytest.raises(StepdownError, match="symbolic link") as info:
            call()
        assert str(link) in str(info.value)
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlinked_slot_file_is_refused(tmp_path: Path, dangling: bool) -> None:
    budget = Budget(2, root=tmp_path / "run")
    budget.acquire(1).release()
    target = tmp_path / "precious"
    if not dangling:
        target.write_text("keep me")
    slot = budget.directory / "slot-0"
    slot.unlink()
    slot.symlink_to(target)
    for call in (lambda: budget.acquire(1), budget.status):
        with pytest.raises(UsageError, match="symbolic link") as info:
            call()
        assert str(slot) in str(info.value)
    assert target.exists() != dangling
    if not dangling:
        assert target.read_text() == "keep me"


def test_a_slot_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    budget = Budget(2, root=tmp_path)
    (tmp_path / "default").mkdir(mode=0o700)
    (tmp_path / "default" / "slot-1").mkdir()
    with Budget(1, root=tmp_path).acquire(1) as grant:  # slot-0 alone is fine
        assert grant.count == 1
    with pytest.raises(UsageError, match="slot-1 is not a regular file"):
        budget.acquire(2)
    with pytest.raises(UsageError, match="slot-1 is not a regular file"):
        budget.status()
    with Budget(1, root=tmp_path).acquire(1) as grant:  # slot-0, taken before the refusal, is free
        assert grant.slots == ("slot-0",)


def test_the_directory_is_private(tmp_path: Path) -> None:
    budget = Budget(2, root=tmp_path / "run")
    budget.acquire(1).release()
    assert (budget.root.stat().st_mode & 0o777) == 0o700
    assert (budget.directory.stat().st_mode & 0o777) == 0o700
    assert (budget.directory / "slot-0").stat().st_mode & 0o777 == 0o600


# ---- settings --------------------------------------------------------------------------------


def test_runtime_root(tmp_path: Path) -> None:
    assert runtime_root({"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path / "stepdown"
    fallback = Path(tempfile.gettempdir()) / f"stepdown-{os.geteuid()}"
    assert runtime_root({}) == fallback
    assert runtime_root({"XDG_RUNTIME_DIR": "relative/dir"}) == fallback
    assert runtime_root({"XDG_RUNTIME_DIR": str(tmp_path / "missing")}) == fallback
    if os.geteuid() == 0:
        other = tmp_path / "other"
        other.mkdir()
        os.chown(other, 65534, 65534)
        assert runtime_root({"XDG_RUNTIME_DIR": str(other)}) == fallback


def test_from_env(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert Budget.from_env(6, env).size == 6
    assert Budget.from_env(6, env).directory == tmp_path / "stepdown" / "default"
    assert Budget.from_env(6, {**env, "STEPDOWN_HOST_WORKERS": " 3 "}).size == 3
    assert Budget.from_env(6, {**env, "STEPDOWN_HOST_WORKERS": ""}).size == 6
    assert Budget.from_env(6, env, name="big", root=tmp_path).directory == tmp_path / "big"
    for bad in ("0", "-2", "many", "1.5"):
        with pytest.raises(UsageError, match="STEPDOWN_HOST_WORKERS"):
            Budget.from_env(6, {**env, "STEPDOWN_HOST_WORKERS": bad})


def test_budgets_of_other_names_do_not_share_slots(tmp_path: Path) -> None:
    a, b = Budget(1, name="a", root=tmp_path), Budget(1, name="b", root=tmp_path)
    with a.acquire(1) as first, b.acquire(1) as second:
        assert (first.count, second.count) == (1, 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda root: Budget(0, root=root), "at least 1 slot"),
        (lambda root: Budget(True, root=root), "at least 1 slot"),
        (lambda root: Budget(2, name="../up", root=root), "budget name"),
        (lambda root: Budget(2, name="", root=root), "budget name"),
        (lambda root: Budget(2, root=root).acquire(-1), "cannot ask for -1 slots"),
        (lambda root: Budget(2, root=root).acquire(0, guaranteed=True), "at least 1 slot"),
        (lambda root: Budget(2, root=root).acquire(1, memory_per_slot=-1), "memory_per_slot"),
        (lambda root: Budget(2, root=root).acquire(1, wait=-1), "wait must be"),
        (lambda root: Budget(2, root=root).acquire(1, wait=float("nan")), "wait must be"),
    ],
)
def test_bad_arguments(tmp_path: Path, call: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call(tmp_path)


def test_to_dict_is_json(tmp_path: Path) -> None:
    budget = Budget(2, root=tmp_path)
    with budget.acquire(1, memory_per_slot=7, label="loky(1)") as grant:
        data = json.loads(json.dumps(budget.to_dict()))
        assert data["size"] == 2
        assert data["error"] is None
        assert data["status"]["held"] == 1
        assert data["status"]["reserved_memory"] == 7
        assert data["status"]["slots"][0]["label"] == "loky(1)"
        assert grant.to_dict()["slots"] == ["slot-0"]
