"""Resources: parsers on real cgroup text, the file layer on fixture trees, overrides, a cgroup.

Fixture trees under ``fixtures/cgroup/`` stand in for ``/`` (``read_resources(root=...)``):

- ``v1-hybrid``: this project's build machine as it is (cgroup v1 plus an empty cgroup2 mount at
  /sys/fs/cgroup/unified; the process's memory group is nested, the others are at the root).
- ``v1-limited``: the same machine, copied from inside a group with 2 GiB, 1 CPU and 500 pids.
- ``v1-kubepods``: v1 with whole hierarchies mounted (root "/") and a group five deep; the memory
  limit sits on the pod, not the container; ``cpu,cpuacct`` share a hierarchy.
- ``v2-nested``: unified hierarchy, three deep; the parent's memory.max is below the child's.
- ``v2-namespaced``: a container in its own cgroup namespace: /proc/self/cgroup says "/" and the
  mount shows the container's scope.

Psutil and sched_getaffinity still read the live machine, so the cgroup figures are chosen to be
the smaller ones, or the assertions take the minimum with the live figure.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepdown.errors import UsageError
from stepdown.planning import resources
from stepdown.planning.resources import (
    Cgroup,
    CgroupEntry,
    Mount,
    Reading,
    cgroup_cpus,
    cgroup_memory,
    cgroup_tasks_left,
    find_cgroups,
    parse_cfs,
    parse_cpu_max,
    parse_loadavg_threads,
    parse_memory_limit,
    parse_memory_stat,
    parse_mountinfo,
    parse_pids_max,
    parse_proc_cgroup,
    probe,
    read_resources,
)

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
MIB = 2**20
GIB = 2**30
HOST_GROUP = "/process_api/d187659686f9a579d7e53e40198b1283"  # the build machine's memory group
CAPTURE_GROUP = "stepdown-test-capture-a4e5a7ad"  # the group v1-limited was copied from
POD = "/kubepods/burstable/pod5c2a9e4b-7f1d-4a8e-9b3c-2d6e8f0a1b4c"
CONTAINER = POD + "/9d4e2f7a1b3c5d6e8f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def text(name: str, path: str) -> str:
    return (FIXTURES / name / path.lstrip("/")).read_text()


def groups(name: str) -> dict[str, Cgroup]:
    entries = parse_proc_cgroup(text(name, "/proc/self/cgroup"))
    return find_cgroups(entries, parse_mountinfo(text(name, "/proc/self/mountinfo")), fixture(name))


def live_cpus() -> int:
    return len(os.sched_getaffinity(0))


def test_public_api() -> None:
    assert set(resources.__all__) == {
        "Cgroup",
        "CgroupEntry",
        "Environment",
        "Mount",
        "Reading",
        "Resources",
        "find_cgroups",
        "parse_cfs",
        "parse_cpu_max",
        "parse_loadavg_threads",
        "parse_memory_limit",
        "parse_memory_stat",
        "parse_mountinfo",
        "parse_pids_max",
        "parse_proc_cgroup",
        "probe",
        "read_resources",
        "tree_rss",
    }


# --- parsers --------------------------------------------------------------------------------


def test_parse_proc_cgroup_v1_hybrid() -> None:
    assert parse_proc_cgroup(text("v1-hybrid", "/proc/self/cgroup")) == [
        CgroupEntry(9, ("name=systemd",), "/"),
        CgroupEntry(8, ("pids",), "/"),
        CgroupEntry(7, ("blkio",), "/"),
        CgroupEntry(6, ("freezer",), "/"),
        CgroupEntry(5, ("devices",), "/"),
        CgroupEntry(4, ("memory",), HOST_GROUP),
        CgroupEntry(3, ("cpuset",), "/"),
        CgroupEntry(2, ("cpuacct",), "/"),
        CgroupEntry(1, ("cpu",), "/"),
        CgroupEntry(0, (), "/"),
    ]


def test_parse_proc_cgroup_joined_controllers_and_v2() -> None:
    entries = parse_proc_cgroup(text("v1-kubepods", "/proc/self/cgroup"))
    assert CgroupEntry(3, ("cpu", "cpuacct"), CONTAINER) in entries
    assert CgroupEntry(5, ("net_cls", "net_prio"), CONTAINER) in entries
    assert CgroupEntry(1, ("name=systemd",), CONTAINER) in entries
    assert parse_proc_cgroup("0::/batch.slice/run-42.scope/worker\n") == [
        CgroupEntry(0, (), "/batch.slice/run-42.scope/worker")
    ]


def test_parse_proc_cgroup_skips_garbage_and_keeps_colons_in_paths() -> None:
    assert parse_proc_cgroup("garbage\n\nx:cpu:/a\n1:cpu:/a:b\n") == [
        CgroupEntry(1, ("cpu",), "/a:b")
    ]


def test_parse_mountinfo_v1_hybrid() -> None:
    mounts = parse_mountinfo(text("v1-hybrid", "/proc/self/mountinfo"))
    cgroups = [m for m in mounts if m.fstype in ("cgroup", "cgroup2")]
    assert cgroups[0] == Mount("/", "/sys/fs/cgroup/cpu", "cgroup", ("rw", "cpu"))
    assert Mount("/", "/sys/fs/cgroup/memory", "cgroup", ("rw", "memory")) in cgroups
    assert Mount("/", "/sys/fs/cgroup/systemd", "cgroup", ("rw", "name=systemd")) in cgroups
    assert cgroups[-1] == Mount("/", "/sys/fs/cgroup/unified", "cgroup2", ("rw",))
    assert len(cgroups) == 10
    assert Mount("/", "/dev/shm", "tmpfs", ("rw", "size=24684084k")) in mounts


def test_parse_mountinfo_namespaced_root() -> None:
    mounts = parse_mountinfo(text("v2-namespaced", "/proc/self/mountinfo"))
    assert [m for m in mounts if m.fstype == "cgroup2"] == [
        Mount(
            "/system.slice/docker-3f9a1c0e7b2d.scope",
            "/sys/fs/cgroup",
            "cgroup2",
            ("rw", "nsdelegate", "memory_recursiveprot"),
        )
    ]


def test_parse_mountinfo_optional_fields_and_escapes() -> None:
    line = r"36 35 98:0 /my\040dir /mnt/a\040b rw,noatime master:1 shared:2 - ext3 /dev/root rw"
    assert parse_mountinfo(line + "\nshort line - x\n") == [
        Mount("/my dir", "/mnt/a b", "ext3", ("rw",))
    ]


@pytest.mark.parametrize(
    ("content", "cpus"),
    [
        ("max 100000\n", None),
        ("max\n", None),
        ("", None),
        ("50000 100000\n", 1),
        ("100000 100000\n", 1),
        ("150000 100000\n", 2),
        ("300000 100000\n", 3),
        ("0 100000", None),
        ("50000 0", None),
        ("junk words", None),
    ],
)
def test_parse_cpu_max(content: str, cpus: int | None) -> None:
    assert parse_cpu_max(content) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [
        ("-1\n", "100000\n", None),
        ("100000\n", "100000\n", 1),
        ("250000\n", "100000\n", 3),
        ("20000\n", "100000\n", 1),
        ("", "100000", None),
        ("100000", "", None),
        ("x", "100000", None),
    ],
)
def test_parse_cfs(quota: str, period: str, cpus: int | None) -> None:
    assert parse_cfs(quota, period) == cpus


@pytest.mark.parametrize(
    ("content", "limit"),
    [
        ("9223372036854771712\n", None),  # v1 "unlimited", as this machine writes it
        (str(2**60), None),
        (str(2**60 - 1), 2**60 - 1),
        ("2147483648\n", 2 * GIB),
        ("max\n", None),
        ("", None),
        ("-5", None),
    ],
)
def test_parse_memory_limit(content: str, limit: int | None) -> None:
    assert parse_memory_limit(content) == limit


def test_parse_memory_stat_real_v1() -> None:
    stat = parse_memory_stat(
        text("v1-limited", f"/sys/fs/cgroup/memory{HOST_GROUP}/{CAPTURE_GROUP}/memory.stat")
    )
    assert stat["hierarchical_memory_limit"] == 2 * GIB
    assert stat["hierarchical_memsw_limit"] == 9223372036854771712
    assert stat["total_inactive_file"] == 0
    assert stat["rss"] == 7131136
    assert len(stat) == 42


def test_parse_memory_stat_v2_and_garbage() -> None:
    worker = "/sys/fs/cgroup/batch.slice/run-42.scope/worker/memory.stat"
    stat = parse_memory_stat(text("v2-nested", worker))
    assert stat["inactive_file"] == 10 * MIB
    assert stat["anon"] == 85 * MIB
    assert parse_memory_stat("a 1\nb\nc x\nd 2 3\n") == {"a": 1}


@pytest.mark.parametrize(
    ("content", "value"), [("max\n", None), ("500\n", 500), ("0", 0), ("", None), ("m", None)]
)
def test_parse_pids_max(content: str, value: int | None) -> None:
    assert parse_pids_max(content) == value


def test_parse_loadavg_threads() -> None:
    assert parse_loadavg_threads(text("v1-hybrid", "/proc/loadavg")) == 90
    assert parse_loadavg_threads("0.52 0.58 0.59 3/1234 56789\n") == 1234
    assert parse_loadavg_threads("0.1 0.2") is None
    assert parse_loadavg_threads("0.1 0.2 0.3 x/y 1") is None


@given(st.text())
def test_parsers_never_raise(content: str) -> None:
    parse_proc_cgroup(content)
    parse_mountinfo(content)
    parse_cpu_max(content)
    parse_cfs(content, content)
    parse_memory_limit(content)
    parse_memory_stat(content)
    parse_pids_max(content)
    parse_loadavg_threads(content)


# --- finding the groups ---------------------------------------------------------------------


def test_find_cgroups_v1_hybrid() -> None:
    base = fixture("v1-hybrid") + "/sys/fs/cgroup"
    assert groups("v1-hybrid") == {
        "cpu": Cgroup(1, base + "/cpu", "/"),
        "memory": Cgroup(1, base + "/memory", HOST_GROUP),
        "pids": Cgroup(1, base + "/pids", "/"),
    }


def test_find_cgroups_nested_not_namespaced() -> None:
    base = fixture("v1-kubepods") + "/sys/fs/cgroup"
    found = groups("v1-kubepods")
    assert found == {
        "cpu": Cgroup(1, base + "/cpu,cpuacct", CONTAINER),
        "memory": Cgroup(1, base + "/memory", CONTAINER),
        "pids": Cgroup(1, base + "/pids", CONTAINER),
    }
    assert found["cpu"].directories() == [
        base + "/cpu,cpuacct" + CONTAINER,
        base + "/cpu,cpuacct" + POD,
        base + "/cpu,cpuacct/kubepods/burstable",
        base + "/cpu,cpuacct/kubepods",
        base + "/cpu,cpuacct",
    ]


def test_find_cgroups_v2_nested() -> None:
    group = Cgroup(2, fixture("v2-nested") + "/sys/fs/cgroup", "/batch.slice/run-42.scope/worker")
    assert groups("v2-nested") == {"cpu": group, "memory": group, "pids": group}


def test_find_cgroups_namespaced() -> None:
    group = Cgroup(2, fixture("v2-namespaced") + "/sys/fs/cgroup", "/")
    assert groups("v2-namespaced") == {"cpu": group, "memory": group, "pids": group}
    assert group.directories() == [fixture("v2-namespaced") + "/sys/fs/cgroup"]


@pytest.mark.parametrize(
    ("mount_root", "path", "below"),
    [
        ("/", "/a/b", "/a/b"),  # whole hierarchy mounted
        ("/docker/abc", "/docker/abc", "/"),  # no cgroup namespace: strip the mount's root
        ("/docker/abc", "/docker/abc/sub", "/sub"),
        ("/docker/abc", "/", "/"),  # own namespace: the path is already below the mount
        ("/docker/abc", "/sub", "/sub"),
        ("/docker/abc", "/../../other", "/"),  # outside our namespace: the nearest visible
    ],
)
def test_find_cgroups_strips_the_mount_root(mount_root: str, path: str, below: str) -> None:
    mountinfo = f"30 20 0:26 {mount_root} /cg rw - cgroup cgroup rw,cpu,cpuacct\n"
    found = find_cgroups(parse_proc_cgroup(f"3:cpu,cpuacct:{path}\n"), parse_mountinfo(mountinfo))
    assert found == {"cpu": Cgroup(1, "/cg", below)}


def test_find_cgroups_prefers_the_mount_that_shows_the_group() -> None:
    mountinfo = (
        "30 20 0:26 /other /elsewhere rw - cgroup2 cgroup2 rw\n"
        "31 20 0:26 /job /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    )
    found = find_cgroups(parse_proc_cgroup("0::/job/inner\n"), parse_mountinfo(mountinfo))
    assert found["memory"] == Cgroup(2, "/sys/fs/cgroup", "/inner")


def test_find_cgroups_hybrid_takes_v2_for_what_v1_lacks() -> None:
    mountinfo = (
        "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    found = find_cgroups(parse_proc_cgroup("1:cpu:/a\n0::/b\n"), parse_mountinfo(mountinfo))
    assert found == {
        "cpu": Cgroup(1, "/sys/fs/cgroup/cpu", "/a"),
        "memory": Cgroup(2, "/sys/fs/cgroup/unified", "/b"),
        "pids": Cgroup(2, "/sys/fs/cgroup/unified", "/b"),
    }


# --- the file layer on fixture trees --------------------------------------------------------


def test_v1_hybrid_this_machine_has_no_limits() -> None:
    found = groups("v1-hybrid")
    assert cgroup_cpus(found["cpu"]) is None
    assert cgroup_memory(found["memory"]) == (None, None)  # 9223372036854771712 = unlimited
    assert cgroup_tasks_left(found["pids"]) is None  # the root group has no pids.max

    snap = read_resources({}, root=fixture("v1-hybrid"))
    assert snap.cpus == Reading(live_cpus(), "sched_getaffinity")
    assert snap.memory_available.source == "psutil available"
    assert snap.memory_limit.source == "psutil total"
    assert snap.tasks_left == Reading(192730 - 90, "threads-max - threads in /proc/loadavg")
    assert snap.shm_free == Reading(None, "/dev/shm not readable")
    assert snap.cgroup_version == 1
    base = fixture("v1-hybrid") + "/sys/fs/cgroup"
    assert snap.cgroup_paths == {
        "cpu": base + "/cpu",
        "memory": base + "/memory" + HOST_GROUP,
        "pids": base + "/pids",
    }
    assert snap.env.container  # /.dockerenv


def test_v1_limited_real_group() -> None:
    base = fixture("v1-limited") + "/sys/fs/cgroup"
    memory_dir = f"{base}/memory{HOST_GROUP}/{CAPTURE_GROUP}"
    usage = 7417856  # memory.usage_in_bytes; total_inactive_file is 0
    snap = read_resources({}, root=fixture("v1-limited"))
    assert snap.cpus == Reading(
        1, f"cgroup v1 cpu.cfs_quota_us/cfs_period_us at {base}/cpu/{CAPTURE_GROUP}"
    )
    assert snap.memory_limit == Reading(
        2 * GIB, f"cgroup v1 hierarchical_memory_limit at {memory_dir}"
    )
    assert snap.memory_available == Reading(
        2 * GIB - usage, f"cgroup v1 hierarchical_memory_limit - usage at {memory_dir}"
    )
    assert snap.tasks_left == Reading(
        499, f"cgroup v1 pids.max - pids.current at {base}/pids/{CAPTURE_GROUP}"
    )
    assert snap.cgroup_version == 1


def test_v1_nested_limits_on_the_pod() -> None:
    base = fixture("v1-kubepods") + "/sys/fs/cgroup"
    found = groups("v1-kubepods")
    assert cgroup_cpus(found["cpu"]) == Reading(
        3, f"cgroup v1 cpu.cfs_quota_us/cfs_period_us at {base}/cpu,cpuacct{CONTAINER}"
    )
    # The container has no limit of its own: hierarchical_memory_limit carries the pod's, and
    # the pod, whose usage includes its other containers, has less left than the container.
    assert cgroup_memory(found["memory"]) == (
        Reading(512 * MIB, f"cgroup v1 hierarchical_memory_limit at {base}/memory{CONTAINER}"),
        Reading(
            512 * MIB - (288 - 64) * MIB,
            f"cgroup v1 hierarchical_memory_limit - usage at {base}/memory{POD}",
        ),
    )
    assert cgroup_tasks_left(found["pids"]) == Reading(
        1024 - 17, f"cgroup v1 pids.max - pids.current at {base}/pids{POD}"
    )
    snap = read_resources({}, root=fixture("v1-kubepods"))
    assert snap.cpus.value == min(live_cpus(), 3)
    assert snap.memory_available.value == 288 * MIB
    assert snap.tasks_left.value == 1007
    assert not snap.env.container


def test_v2_nested_walks_up_to_the_smallest() -> None:
    base = fixture("v2-nested") + "/sys/fs/cgroup"
    worker = f"{base}/batch.slice/run-42.scope/worker"
    snap = read_resources({}, root=fixture("v2-nested"))
    assert snap.cpus == Reading(1, f"cgroup v2 cpu.max at {worker}")  # 50000/100000 beats 3
    # The parent's 1 GiB binds although the worker's own memory.max is 2 GiB.
    assert snap.memory_limit == Reading(GIB, f"cgroup v2 memory.max at {base}/batch.slice")
    assert snap.memory_available == Reading(
        GIB - (300 - 50) * MIB, f"cgroup v2 memory.max - usage at {base}/batch.slice"
    )
    assert snap.tasks_left == Reading(
        100 - 40, f"cgroup v2 pids.max - pids.current at {base}/batch.slice/run-42.scope"
    )
    assert snap.cgroup_version == 2
    assert snap.cgroup_paths == {"cpu": worker, "memory": worker, "pids": worker}
    assert not snap.env.container


def test_v2_namespaced_reads_the_mount_itself() -> None:
    base = fixture("v2-namespaced") + "/sys/fs/cgroup"
    found = groups("v2-namespaced")
    assert cgroup_cpus(found["cpu"]) == Reading(2, f"cgroup v2 cpu.max at {base}")
    assert cgroup_memory(found["memory"]) == (
        Reading(4 * GIB, f"cgroup v2 memory.max at {base}"),
        Reading(4 * GIB - (1024 - 256) * MIB, f"cgroup v2 memory.max - usage at {base}"),
    )
    snap = read_resources({}, root=fixture("v2-namespaced"))
    assert snap.cpus.value == min(live_cpus(), 2)
    assert snap.tasks_left == Reading(4084, f"cgroup v2 pids.max - pids.current at {base}")
    assert snap.env.container  # the cgroup mount shows a subtree handed in from outside


def test_to_dict_is_json() -> None:
    snap = read_resources({"RAY_ADDRESS": "auto", "CI": "true"}, root=fixture("v2-nested"))
    data = json.loads(json.dumps(snap.to_dict()))
    assert data["memory_limit"]["value"] == GIB
    assert data["env"] == {"kaggle": False, "ci": True, "ray_address": "auto", "container": False}
    assert data["cgroup_version"] == 2
    assert set(data) == {
        "cpus",
        "memory_available",
        "memory_limit",
        "tasks_left",
        "shm_free",
        "caller_rss",
        "env",
        "cgroup_version",
        "cgroup_paths",
    }


@pytest.mark.parametrize(
    ("environ", "kaggle", "ci"),
    [
        ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, True, False),
        ({"KAGGLE_URL_BASE": "https://www.kaggle.com"}, True, False),
        ({"CI": "1"}, False, True),
        ({"CI": "false"}, False, False),
        ({"CI": ""}, False, False),
    ],
)
def test_environment(environ: dict[str, str], kaggle: bool, ci: bool) -> None:
    env = read_resources(environ, root=fixture("v2-nested")).env
    assert (env.kaggle, env.ci, env.ray_address) == (kaggle, ci, None)


def test_kaggle_working_directory(tmp_path: Path) -> None:
    (tmp_path / "kaggle" / "working").mkdir(parents=True)
    assert read_resources({}, root=str(tmp_path)).env.kaggle


# --- overrides ------------------------------------------------------------------------------


def test_overrides_replace_each_figure() -> None:
    environ = {
        "STEPDOWN_CPUS": "7",
        "STEPDOWN_MEMORY": "2GiB",
        "STEPDOWN_MEMORY_LIMIT": "3 GiB",
        "STEPDOWN_TASKS_LEFT": "0",
        "STEPDOWN_SHM": "64MiB",
    }
    snap = read_resources(environ, root=fixture("v2-nested"))
    assert snap.cpus == Reading(7, "STEPDOWN_CPUS")
    assert snap.memory_available == Reading(2 * GIB, "STEPDOWN_MEMORY")
    assert snap.memory_limit == Reading(3 * GIB, "STEPDOWN_MEMORY_LIMIT")
    assert snap.tasks_left == Reading(0, "STEPDOWN_TASKS_LEFT")
    assert snap.shm_free == Reading(64 * MIB, "STEPDOWN_SHM")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STEPDOWN_CPUS", "0"),
        ("STEPDOWN_CPUS", "two"),
        ("STEPDOWN_CPUS", "1.5"),
        ("STEPDOWN_MEMORY", "lots"),
        ("STEPDOWN_MEMORY_LIMIT", "-3"),
        ("STEPDOWN_TASKS_LEFT", "-1"),
        ("STEPDOWN_SHM", "1.5XB"),
    ],
)
def test_malformed_override_is_a_usage_error(name: str, value: str) -> None:
    # One rule for every STEPDOWN_* variable (docs/deployment.md): a value set on purpose that
    # cannot be used stops the run, naming the variable and the value.
    with pytest.raises(UsageError) as caught:
        read_resources({name: value}, root=fixture("v2-nested"))
    assert str(caught.value).startswith(f"{name}={value!r}: ")


def test_empty_override_means_unset(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stepdown")
    snap = read_resources({"STEPDOWN_CPUS": " "}, root=fixture("v2-nested"))
    assert snap.cpus.source != "STEPDOWN_CPUS"
    assert not caplog.records


# --- never raises ---------------------------------------------------------------------------


def test_empty_root_gives_none_or_fallbacks(tmp_path: Path) -> None:
    snap = read_resources({}, root=str(tmp_path))
    assert snap.cpus == Reading(live_cpus(), "sched_getaffinity")
    assert snap.memory_available.source == "psutil available"
    assert snap.memory_limit.source == "psutil total"
    assert snap.tasks_left.value is None
    assert snap.shm_free.value is None
    assert snap.caller_rss.value is not None and snap.caller_rss.value > 0
    assert snap.cgroup_version is None
    assert snap.cgroup_paths == {}
    assert not snap.env.container
    json.dumps(snap.to_dict())


def test_garbage_tree_never_raises(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "v2-nested", root)
    for path in root.rglob("*"):
        if path.is_file() and "self" not in path.parts:
            path.write_bytes(b"\xff\xfe garbage\x00 -1 max\n")
    # A directory where a file should be makes open() fail with IsADirectoryError.
    memory_max = root / "sys/fs/cgroup/batch.slice/memory.max"
    memory_max.unlink()
    memory_max.mkdir()
    snap = read_resources({}, root=str(root))
    assert snap.cpus == Reading(live_cpus(), "sched_getaffinity")
    assert snap.memory_available.source == "psutil available"
    assert snap.tasks_left.value is None
    assert snap.cgroup_version == 2


def test_without_psutil_or_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)  # makes `import psutil` raise ImportError

    def no_affinity(pid: int) -> set[int]:
        raise OSError(errno.EINVAL, "no affinity here")

    monkeypatch.setattr(os, "sched_getaffinity", no_affinity)
    snap = read_resources({}, root=fixture("v1-hybrid"))
    assert snap.cpus == Reading(os.cpu_count() or 1, "os.cpu_count")
    assert snap.memory_available == Reading(None, "no memory source read")
    assert snap.memory_limit == Reading(None, "no memory source read")
    if os.path.exists("/proc/self/statm"):  # read from /proc, psutil or not
        assert snap.caller_rss.source == "/proc/self/statm"
        assert snap.caller_rss.value is not None and snap.caller_rss.value > 0
    else:
        assert snap.caller_rss == Reading(None, "no /proc/self/statm, psutil unavailable")
    limited = read_resources({}, root=fixture("v1-limited"))
    assert limited.memory_limit.value == 2 * GIB


# --- probe on this machine ------------------------------------------------------------------


def test_probe_live_is_sane() -> None:
    snap = probe({})
    assert 1 <= (snap.cpus.value or 0) <= (os.cpu_count() or 1)
    assert snap.memory_available.value is not None and snap.memory_limit.value is not None
    assert 0 < snap.memory_available.value <= snap.memory_limit.value
    json.dumps(snap.to_dict())


def test_probe_cache() -> None:
    first = probe({}, max_age=60)
    assert probe({}, max_age=60) is first
    assert probe({}) is not first  # max_age=0 always reads
    fresh = probe({}, max_age=60)
    assert probe({"STEPDOWN_CPUS": "3"}, max_age=60) is not fresh  # other variables, new read
    assert probe({"STEPDOWN_CPUS": "3"}, max_age=60).cpus == Reading(3, "STEPDOWN_CPUS")


def test_import_is_cheap() -> None:
    code = "import sys, stepdown.planning.resources; assert 'psutil' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- a real cgroup --------------------------------------------------------------------------

# What the real group sets, per controller and cgroup version.
_LIMITS = {
    1: {
        "memory": {"memory.limit_in_bytes": str(2 * GIB)},
        "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"},
        "pids": {"pids.max": "500"},
    },
    2: {
        "memory": {"memory.max": str(2 * GIB)},
        "cpu": {"cpu.max": "100000 100000"},
        "pids": {"pids.max": "500"},
    },
}


def _cgroup_parents() -> tuple[int, dict[str, str]] | str:
    """(version, controller → directory to create the test group in), or why we cannot."""
    if not sys.platform.startswith("linux"):
        return "needs Linux cgroups"
    if os.geteuid() != 0:
        return "needs root to create a cgroup"
    controllers = ("memory", "cpu", "pids")
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        own.update({name: path for name in names.split(",")})
    if all(c in own and Path(f"/sys/fs/cgroup/{c}/cgroup.procs").exists() for c in controllers):
        # Nest under our own group, so the test stays inside whatever accounts for this run.
        return 1, {c: f"/sys/fs/cgroup/{c}{own[c].rstrip('/')}" for c in controllers}
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and set(controllers) <= set(v2.read_text().split()):
        return 2, dict.fromkeys(controllers, "/sys/fs/cgroup")
    return "no cgroup v1 hierarchies nor cgroup v2 with memory, cpu and pids at /sys/fs/cgroup"


def _remove_group(directory: str) -> None:
    """Kill what is left in the group, then remove it."""
    deadline = time.monotonic() + 10
    while True:
        try:
            pids = Path(directory, "cgroup.procs").read_text().split()
        except FileNotFoundError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            os.rmdir(directory)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def _real_cgroup() -> Iterator[list[str]]:
    """A fresh group limited to 2 GiB, 1 CPU and 500 tasks; yields its directories."""
    found = _cgroup_parents()
    if isinstance(found, str):
        pytest.skip(found)
    version, parents = found
    name = f"stepdown-test-resources-{uuid.uuid4().hex[:8]}"
    made: list[str] = []
    try:
        if version == 2:
            Path("/sys/fs/cgroup/cgroup.subtree_control").write_text("+memory +cpu +pids")
        for controller, parent in parents.items():
            directory = f"{parent}/{name}"
            if directory not in made:
                os.mkdir(directory)
                made.append(directory)
            for filename, value in _LIMITS[version][controller].items():
                Path(directory, filename).write_text(value)
        yield made
    finally:
        for directory in made:
            _remove_group(directory)


@pytest.mark.timeout(60)
def test_probe_inside_a_real_cgroup() -> None:
    with _real_cgroup() as directories:

        def enter() -> None:  # runs in the child between fork and exec
            for directory in directories:
                Path(directory, "cgroup.procs").write_text(str(os.getpid()))

        code = (
            "from stepdown.planning.resources import probe; import json; "
            "print(json.dumps(probe().to_dict()))"
        )
        environ = {k: v for k, v in os.environ.items() if not k.startswith("STEPDOWN_")}
        done = subprocess.run(
            [sys.executable, "-c", code],
            preexec_fn=enter,
            env=environ,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    snap = json.loads(done.stdout)
    print(json.dumps(snap, indent=1))
    assert snap["cpus"]["value"] == 1
    assert snap["memory_limit"]["value"] <= 2 * GIB
    assert 0 < snap["memory_available"]["value"] <= 2 * GIB
    assert snap["tasks_left"]["value"] <= 500
    for figure in ("cpus", "memory_limit", "memory_available", "tasks_left"):
        assert "stepdown-test-resources-" in snap[figure]["source"], snap[figure]
