"""The fault helpers produce the real kernel conditions, not look-alike exceptions.

Every other failure-mode test trusts these helpers, so each is checked against what the kernel
itself reports: the errno of a refused fork, the signal that ended an OOM-killed child, the
group's own counters, the directories left (or not) under /sys/fs/cgroup.
"""

from __future__ import annotations

import errno
import glob
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.support import cgroups
from tests.support.cgroups import (
    PREFIX,
    Cgroup,
    child_env,
    cleanup_leftovers,
    parse_flat_keyed,
    parse_mounts,
    parse_proc_cgroup,
    pids_headroom,
    skip_unless_cgroups,
)
from tests.support.faults import fork_fails_with_enomem, limit_data
from tests.support.tasks import counting_dir, counts, record

MiB = 1 << 20


def _own_groups() -> list[str]:
    """Groups created by this test process, in any hierarchy (other sessions may have theirs)."""
    pattern = f"{PREFIX}{os.getpid()}-*"
    return glob.glob(f"/sys/fs/cgroup/*/{pattern}") + glob.glob(f"/sys/fs/cgroup/{pattern}")


@pytest.fixture(autouse=True)
def _no_group_left_behind() -> Iterator[None]:
    yield
    assert _own_groups() == []


def _gone(pid: int) -> bool:
    """True once a process is reaped or is a zombie (it can no longer run)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --------------------------------------------------------------------------- (a) fork -> ENOMEM


@pytest.mark.timeout(60)
def test_fork_fails_with_enomem_inside_and_works_after() -> None:
    with fork_fails_with_enomem():
        with pytest.raises(OSError) as refused:
            if os.fork() == 0:
                os._exit(0)
        assert refused.value.errno == errno.ENOMEM
        assert str(refused.value) == "[Errno 12] Cannot allocate memory"

        # The production symptom: a fork-context pool raises it from submit().
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
        with pytest.raises(OSError) as at_submit:
            pool.submit(abs, -1)
        assert at_submit.value.errno == errno.ENOMEM
        pool.shutdown(wait=False, cancel_futures=True)

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0


# --------------------------------------------------------------------------- (c) pids.max

START_THREADS = """
import threading
started = 0
try:
    while started < 100:
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        started += 1
finally:
    print("started", started)
"""


@pytest.mark.timeout(60)
def test_pids_headroom_stops_thread_start_in_a_child() -> None:
    skip_unless_cgroups("pids")
    with Cgroup("pids") as group:
        with pids_headroom(group, 3):
            assert (group.paths["pids"] / "pids.max").read_text().strip() == "3"
            result = group.run_python(START_THREADS)
            events = parse_flat_keyed((group.paths["pids"] / "pids.events").read_text())
        assert (group.paths["pids"] / "pids.max").read_text().strip() == "max"

    # The main thread plus 2 started threads fill the 3 pids; the third start is refused.
    assert result.stdout == "started 2\n"
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith("RuntimeError: can't start new thread"), result.stderr
    assert events["max"] >= 1


OWN_HEADROOM = """
import threading
from tests.support.cgroups import Cgroup, pids_headroom

def start():
    threading.Thread(target=threading.Event().wait, daemon=True).start()

group = Cgroup.current("pids")
started = 0
with pids_headroom(group, 2):
    try:
        while started < 100:
            start()
            started += 1
    except RuntimeError as exc:
        print("stopped after", started, "-", exc)
start()
print("after the limit is lifted", group.pids_current())
"""


@pytest.mark.timeout(60)
def test_a_child_can_tighten_its_own_group() -> None:
    """The pattern for pool tests: the child counts itself, then leaves k pids for the pool."""
    skip_unless_cgroups("pids")
    with Cgroup("pids") as group:
        result = group.run_python(OWN_HEADROOM)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stopped after 2 - can't start new thread",
        "after the limit is lifted 4",
    ]


@pytest.mark.timeout(60)
def test_settle_pids_waits_for_orphans_to_be_reaped() -> None:
    skip_unless_cgroups("pids")
    with Cgroup("pids") as group:
        # The shell exits at once, leaving an orphan that exits 0.3 s later; init reaps it late.
        group.run_python("import subprocess; subprocess.Popen(['sleep', '0.3'])")
        assert group.settle_pids(timeout=10) == 0


@pytest.mark.timeout(30)
def test_run_python_does_not_wait_for_leftovers_holding_its_output() -> None:
    """An orphaned pool worker keeping stdout open must not turn a finished child into a hang."""
    skip_unless_cgroups("pids")
    with Cgroup("pids") as group:
        started = time.monotonic()
        result = group.run_python(
            "import subprocess; print(subprocess.Popen(['sleep', '600']).pid)", timeout=20
        )
        assert time.monotonic() - started < 10
        assert result.returncode == 0
        assert _wait_until(lambda: _gone(int(result.stdout)))


@pytest.mark.timeout(30)
def test_run_python_timeout_dumps_tracebacks_and_kills_the_group() -> None:
    skip_unless_cgroups("pids")
    with Cgroup("pids") as group:
        code = "import subprocess, time; subprocess.Popen(['sleep', '600']); time.sleep(600)"
        with pytest.raises(subprocess.TimeoutExpired) as expired:
            group.run_python(code, timeout=1)
        assert group.pids() == []
    stderr = str(expired.value.stderr)  # text: run_python captures with text=True
    assert "Fatal Python error: Aborted" in stderr
    assert 'File "<string>", line 1 in <module>' in stderr


# --------------------------------------------------------------------------- (d) the OOM killer


@pytest.mark.timeout(60)
def test_memory_group_oom_kills_a_child_that_touches_too_much() -> None:
    skip_unless_cgroups("memory")
    with Cgroup("memory") as group:
        group.set_memory_limit(256 * MiB)
        memsw = group.paths["memory"] / "memory.memsw.limit_in_bytes"
        if group.version == 1 and memsw.exists():
            assert int(memsw.read_text()) == 256 * MiB
        result = group.run_python(
            "print('allocating'); data = b'x' * (400 << 20); print('survived')"
        )
        assert result.returncode == -signal.SIGKILL
        assert result.stdout == "allocating\n"
        assert group.oom_kills() == 1

        # Raising the limit again (memsw first) must work too.
        group.set_memory_limit(512 * MiB)
        assert group.run_python("data = b'x' * (400 << 20)").returncode == 0


@pytest.mark.timeout(60)
def test_oom_killer_off_blocks_the_child_and_destroy_still_ends_it() -> None:
    """The chaos recipe: nobody is killed, the child waits in the kernel for memory."""
    skip_unless_cgroups("memory")
    group = Cgroup("memory", name="oom-off")
    directories = group.directories
    try:
        group.set_memory_limit(64 * MiB, oom_kill=False)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        child = group.popen([sys.executable, "-c", "data = b'x' * (200 << 20)"], **quiet)
        oom_control = group.paths["memory"] / "memory.oom_control"
        assert _wait_until(lambda: parse_flat_keyed(oom_control.read_text())["under_oom"] == 1)
        assert child.poll() is None and group.oom_kills() == 0
    finally:
        group.destroy()
    assert child.returncode == -signal.SIGKILL
    assert [d for d in directories if d.exists()] == []


# --------------------------------------------------------------------------- (b) MemoryError

LIMITED_CHILD = """
import threading
from tests.support.faults import limit_data
limit_data(64 << 20)
small = bytearray(16 << 20)
thread = threading.Thread(target=print, args=("threads still start",))
thread.start()
thread.join()
big = bytearray(512 << 20)
print("survived")
"""


@pytest.mark.timeout(60)
def test_limit_data_makes_a_big_allocation_raise_memory_error() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LIMITED_CHILD],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=50,
    )
    assert result.returncode == 1
    assert result.stdout == "threads still start\n"
    assert result.stderr.rstrip().splitlines()[-1] == "MemoryError"


@pytest.mark.timeout(60)
def test_limit_data_as_a_worker_initializer() -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=limit_data, initargs=(64 * MiB,)
    ) as pool:
        assert pool.submit(len, bytearray(MiB)).result() == MiB
        refused = pool.submit(bytearray, 512 * MiB).exception()
        assert type(refused) is MemoryError
        # The worker survives it: the next task runs in the same process.
        assert pool.submit(abs, -3).result() == 3


# --------------------------------------------------------------------------- counting executions


@pytest.mark.timeout(60)
def test_record_counts_across_threads_and_processes(tmp_path: Path) -> None:
    directory = counting_dir(tmp_path)
    record(directory, 0)
    threads = [threading.Thread(target=record, args=(directory, 1)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(record, [directory] * 4, [2, 2, 3, 4]))
    code = f"from tests.support.tasks import record; record({directory!r}, 4)"
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), timeout=50)

    assert counts(directory) == Counter({0: 1, 1: 3, 2: 2, 3: 1, 4: 2})
    writers = {name.split("-")[2] for name in os.listdir(directory)}
    assert str(os.getpid()) in writers and len(writers) >= 3
    assert counts(counting_dir(tmp_path)) == Counter()


# --------------------------------------------------------------------------- lifecycle


THREE_SLEEPING_THREADS = """
import threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
time.sleep(600)
"""


@pytest.mark.timeout(60)
def test_destroy_kills_members_and_removes_every_directory() -> None:
    skip_unless_cgroups("memory", "pids", "cpu")
    group = Cgroup("memory", "pids", "cpu", name="destroy")
    directories = group.directories
    assert len(directories) == 3 and all(d.is_dir() for d in directories)
    group.set_cpu_quota(0.5)
    if group.version == 1:
        assert (group.paths["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"

    sleeper = group.popen(["sleep", "600"])
    threaded = group.popen([sys.executable, "-c", THREE_SLEEPING_THREADS])
    # 1 sleep + a python with 3 threads: pids counts the threads.
    assert _wait_until(lambda: group.pids_current() == 5), group.pids_current()
    assert group.pids() == sorted([sleeper.pid, threaded.pid])

    group.destroy()
    assert [d for d in directories if d.exists()] == []
    assert sleeper.returncode == threaded.returncode == -signal.SIGKILL
    group.destroy()


@pytest.mark.timeout(30)
def test_with_block_destroys_even_after_an_error() -> None:
    skip_unless_cgroups("pids")
    with pytest.raises(ZeroDivisionError), Cgroup("pids") as group:
        group.popen(["sleep", "600"])
        directories = group.directories
        1 / 0  # noqa: B018
    assert [d for d in directories if d.exists()] == []


LEAK = """
import os, subprocess
from tests.support.cgroups import Cgroup
group = Cgroup("memory", "pids", name="leaked")
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # or run() waits for it
sleeper = group.popen(["sleep", "600"], start_new_session=True, **quiet)
print(sleeper.pid, *group.directories)
os._exit(0)
"""


@pytest.mark.timeout(60)
def test_cleanup_leftovers_removes_a_crashed_runs_group_only() -> None:
    skip_unless_cgroups("memory", "pids")
    crashed = subprocess.run(
        [sys.executable, "-c", LEAK],
        capture_output=True,
        text=True,
        env=child_env(),
        check=True,
        timeout=50,
    )
    pid, *paths = crashed.stdout.split()
    leaked = [Path(p) for p in paths]
    assert all(p.is_dir() and p.name.startswith(PREFIX) for p in leaked)
    assert not _gone(int(pid))

    with Cgroup("pids", name="alive") as alive:
        removed = cleanup_leftovers()
        # A group whose owner is alive (this process) is not a leftover.
        assert alive.paths["pids"].is_dir()
    assert set(leaked) <= set(removed)
    assert [p for p in leaked if p.exists()] == []
    assert _wait_until(lambda: _gone(int(pid)))


@pytest.mark.timeout(30)
def test_skip_reason_names_what_is_missing() -> None:
    with pytest.raises(pytest.skip.Exception) as skipped:
        skip_unless_cgroups("memory", "nosuch")
    reason = str(skipped.value.msg)
    if sys.platform.startswith("linux") and os.geteuid() == 0:
        assert "'nosuch'" in reason and "'memory'" not in reason
    else:
        assert "Linux" in reason or "root" in reason


# --------------------------------------------------------------------------- parsers, v2 layout

HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
UNIFIED_MOUNTS = """\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
"""


def test_parse_mounts_hybrid_v1() -> None:
    mounts = parse_mounts(HYBRID_MOUNTS)
    assert mounts.v1 == {
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "memory": Path("/sys/fs/cgroup/memory"),
        "pids": Path("/sys/fs/cgroup/pids"),
    }
    assert mounts.v2 == Path("/sys/fs/cgroup/unified")
    assert cgroups._version(mounts) == 1


def test_parse_mounts_unified_v2_and_none() -> None:
    mounts = parse_mounts(UNIFIED_MOUNTS)
    assert mounts.v1 == {} and mounts.v2 == Path("/sys/fs/cgroup")
    assert cgroups._version(mounts) == 2
    assert cgroups._version(parse_mounts("proc /proc proc rw 0 0\n")) is None
    assert parse_mounts(r"cgroup2 /mnt/a\040b cgroup2 rw 0 0").v2 == Path("/mnt/a b")


def test_parse_proc_cgroup_and_counters() -> None:
    v1 = "8:pids:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/\n"
    assert parse_proc_cgroup(v1) == {
        "pids": "/",
        "memory": "/process_api/abc",
        "cpu": "/x",
        "cpuacct": "/x",
        "": "/",
    }
    assert parse_proc_cgroup("0::/user.slice/session-1.scope\n") == {
        "": "/user.slice/session-1.scope"
    }
    oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    assert parse_flat_keyed(oom_control) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}
    events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
    assert parse_flat_keyed(events)["oom_kill"] == 2


def test_v2_group_writes_the_v2_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The v2 code path on a fake tree: this machine's controllers all live in v1."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw,nosuid 0 0\n")
    monkeypatch.setattr(cgroups, "_MOUNTS", mounts)
    assert cgroups.cgroup_version() == 2

    group = Cgroup("memory", "pids", "cpu", name="v2")
    assert group.directories == [root / group.name]
    directory = root / group.name
    (directory / "memory.swap.max").write_text("max")
    group.set_memory_limit(256 * MiB)
    group.set_pids_max(7)
    group.set_cpu_quota(1.5)
    assert (directory / "memory.max").read_text() == str(256 * MiB)
    assert (directory / "memory.swap.max").read_text() == "0"
    assert (directory / "pids.max").read_text() == "7"
    assert (directory / "cpu.max").read_text() == "150000 100000"
    (directory / "memory.events").write_text("oom 1\noom_kill 1\n")
    assert group.oom_kills() == 1
    with pytest.raises(pytest.skip.Exception, match="no switch to turn the OOM killer off"):
        group.set_memory_limit(MiB, oom_kill=False)
