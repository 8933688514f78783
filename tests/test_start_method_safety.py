"""Profiles work where users run code: no fresh-interpreter start method (forkserver, spawn) where
a fresh interpreter cannot rebuild ``__main__`` (stdin, ``-c``, IPython, an unguarded script).

Each case runs for real in a subprocess, with ``STEPDOWN_CPUS=64`` so that ``auto`` picks the
server profile, whose process rungs start by forkserver where the caller runs another thread
(``start_method = "auto"``): each program starts one, as a long-lived server would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stepdown.planning.launch import Launch
from stepdown.planning.planner import make_plan
from stepdown.planning.policy import load_policy, parse_policy_ladder
from stepdown.planning.resources import Environment, Reading, Resources

# Items of a class defined in __main__: a worker must rebuild __main__ to unpickle them.
BODY = """\
import dataclasses, json, threading, time, stepdown
print("body ran", flush=True)
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()

@dataclasses.dataclass
class Sample:
    x: int

def double(sample):
    return sample.x * 2

def main():
    run = stepdown.run(double, [Sample(i) for i in range(6)])
    plan = stepdown.plan(tasks=6).to_dict()
    rungs = [r for r in plan["rungs"] if r["backend"] == "process"]
    print(json.dumps({
        "profile": plan["profile"],
        "results": run.results,
        "methods": [r["options"].get("start_method") for r in rungs],
        "reasons": [r["reason"] for r in rungs],
    }), flush=True)
"""
UNGUARDED = BODY + "\nmain()\n"
GUARDED = BODY + '\nif __name__ == "__main__":\n    main()\n'


def env(tmp_path: Path) -> dict[str, str]:
    """64 CPUs (the server profile), a budget of our own, no policy of the caller's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STEPDOWN_")}
    return {**base, "STEPDOWN_CPUS": "64", "XDG_RUNTIME_DIR": str(tmp_path)}


def outcome(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    # A fresh worker that runs the script's body again may print into the same line, before or
    # after the result.
    [line] = [line[line.index("{") :] for line in out.stdout.splitlines() if "{" in line]
    found: dict[str, Any] = json.JSONDecoder().raw_decode(line)[0]
    assert found["profile"] == "server"
    assert found["results"] == [0, 2, 4, 6, 8, 10]
    return found


def python(
    tmp_path: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env(tmp_path),
        cwd=tmp_path,
        check=False,
    )


@pytest.mark.timeout(90)
def test_a_program_read_from_stdin_runs_on_forked_workers(tmp_path: Path) -> None:
    found = outcome(python(tmp_path, "-", stdin=UNGUARDED))
    assert found["methods"] == ["fork", "fork"]
    assert all("fork, not forkserver: __main__ was read from stdin" in r for r in found["reasons"])


@pytest.mark.timeout(90)
def test_a_program_given_with_dash_c_runs_on_forked_workers(tmp_path: Path) -> None:
    found = outcome(python(tmp_path, "-c", UNGUARDED))
    assert found["methods"] == ["fork", "fork"]
    assert "python -c and defines Sample, double, main" in found["reasons"][0]


@pytest.mark.timeout(90)
def test_a_dash_c_program_that_defines_nothing_keeps_the_profiles_forkserver(
    tmp_path: Path,
) -> None:
    # Nothing in __main__ for a worker to look up: forkserver workers can run it.
    program = (
        "import json, operator, threading, time, stepdown\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "run = stepdown.run(operator.neg, range(6))\n"
        "rungs = stepdown.plan(tasks=6).to_dict()['rungs']\n"
        "print(json.dumps([r['options'].get('start_method') for r in rungs][:2]))\n"
        "print(json.dumps(run.results))\n"
    )
    out = python(tmp_path, "-c", program)
    assert out.returncode == 0, out.stderr[-3000:]
    methods, results = out.stdout.splitlines()[-2:]
    assert json.loads(methods) == ["forkserver", "forkserver"]
    assert json.loads(results) == [0, -1, -2, -3, -4, -5]


@pytest.mark.timeout(90)
def test_an_unguarded_script_runs_its_body_once(tmp_path: Path) -> None:
    script = tmp_path / "score.py"
    script.write_text(UNGUARDED)
    out = python(tmp_path, str(script))
    found = outcome(out)
    assert out.stdout.count("body ran") == 1
    assert found["methods"] == ["fork", "fork"]
    assert 'outside `if __name__ == "__main__":`' in found["reasons"][0]


@pytest.mark.timeout(90)
def test_a_guarded_script_keeps_the_profiles_forkserver(tmp_path: Path) -> None:
    script = tmp_path / "score.py"
    script.write_text(GUARDED)
    found = outcome(python(tmp_path, str(script)))
    assert found["methods"] == ["forkserver", "forkserver"]
    assert not any("fork, not" in r for r in found["reasons"])


@pytest.mark.timeout(90)
def test_an_ipython_session_runs_on_forked_workers(tmp_path: Path) -> None:
    pytest.importorskip("IPython")
    ipython = shutil.which("ipython", path=str(Path(sys.executable).parent))
    assert ipython is not None
    out = subprocess.run(
        [ipython, "--no-banner", "--colors=nocolor", "-c", UNGUARDED],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(tmp_path),
        cwd=tmp_path,
        check=False,
    )
    found = outcome(out)
    assert found["methods"] == ["fork", "fork"]
    assert "IPython" in found["reasons"][0]


def resources() -> Resources:
    return Resources(
        cpus=Reading(8, "test cpus"),
        memory_available=Reading(16 * 1024**3, "test memory"),
        memory_limit=Reading(None, "test"),
        tasks_left=Reading(None, "test pids"),
        shm_free=Reading(None, "test"),
        caller_rss=Reading(1024**3, "test rss"),
        env=Environment(kaggle=False, ci=False, ray_address=None, container=False),
        cgroup_version=2,
        cgroup_paths={},
    )


BUILTIN = load_policy(environ={}, cwd="/nonexistent")
FAILS = Launch(("fork", "spawn", "forkserver"), "fork", "__main__ was given with python -c")


def test_an_asked_start_method_wins_and_the_plan_says_it_will_fail() -> None:
    server = BUILTIN.profiles["server"]
    chosen = make_plan(BUILTIN, server, resources(), 40, start_method="spawn", launch=FAILS)
    first = chosen.rungs[0]
    assert first.rung.options["start_method"] == "spawn"
    assert "start_method spawn as asked, but its workers will fail here" in first.reason
    ladder = parse_policy_ladder([{"backend": "process", "start_method": "forkserver"}], "t", "l")
    given = make_plan(BUILTIN, server, resources(), 40, ladder=ladder, launch=FAILS)
    assert given.rungs[0].rung.options["start_method"] == "forkserver"
    assert "as asked, but its workers will fail here" in given.rungs[0].reason


def test_the_platform_default_counts_and_without_fork_the_rung_is_skipped() -> None:
    laptop = BUILTIN.profiles["kaggle"]
    plain = parse_policy_ladder(["process:2"], "t", "l")
    # Python 3.14's Linux default (forkserver) for a rung that names no start method.
    default = Launch(("fork", "spawn", "forkserver"), "forkserver", "no file")
    chosen = make_plan(BUILTIN, laptop, resources(), 40, ladder=plain, launch=default)
    assert chosen.rungs[0].rung.options["start_method"] == "fork"
    assert chosen.rungs[0].workers == 2
    # Windows: spawn only. The rung cannot work here: skipped, with the reason.
    windows = Launch(("spawn",), "spawn", "no file")
    skipped = make_plan(BUILTIN, laptop, resources(), 40, ladder=plain, launch=windows)
    assert skipped.rungs[0].skipped
    assert skipped.rungs[0].reason == "its workers would start by spawn, which fails here: no file"
    assert [p.rung.backend for p in skipped.rungs if not p.skipped] == ["sequential"]
    # A loky rung never imports __main__ again: left as it is.
    loky = parse_policy_ladder(["loky:2"], "t", "l")
    kept = make_plan(BUILTIN, laptop, resources(), 40, ladder=loky, launch=windows)
    assert kept.rungs[0].workers == 2
    assert "start_method" not in kept.rungs[0].rung.options
