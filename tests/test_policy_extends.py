"""Profiles that ``extends`` another (a built-in or one of the same file) and override keys, the
errors for a cycle or an unknown parent, and ``auto`` picking a user's profile by its ``when``.

Each case runs ``python -m stepdown plan`` in a subprocess, with the policy file in
``tmp_path`` and the figures set by real environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)


def plan(
    tmp_path: Path, policy: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``stepdown plan --policy stepdown.toml ARGS`` on 4 CPUs unless ``env`` says otherwise."""
    (tmp_path / "stepdown.toml").write_text(policy)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STEPDOWN_", "KAGGLE_"))}
    base.pop("CI", None)
    return subprocess.run(
        [sys.executable, "-m", "stepdown", "plan", "--policy", "stepdown.toml", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "STEPDOWN_CPUS": "4", "XDG_RUNTIME_DIR": str(tmp_path), **(env or {})},
        cwd=tmp_path,
        check=False,
    )


def plan_json(tmp_path: Path, policy: str, *args: str, **env: str) -> dict[str, Any]:
    out = plan(tmp_path, policy, "--json", "--tasks", "8", *args, env=env)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def labels(data: dict[str, Any]) -> list[str]:
    return [r["label"] for r in data["rungs"]]


def policy_error(out: subprocess.CompletedProcess[str], tmp_path: Path, key: str) -> str:
    assert out.returncode == 2, out.stdout
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"stepdown: {tmp_path / 'stepdown.toml'}, {key}: "), line
    return line


def test_a_profile_extends_a_builtin_and_overrides_keys(tmp_path: Path) -> None:
    policy = """
[profiles.roomy]
extends = "kaggle"
memory_headroom = "40%"
budget = { size = 3 }
"""
    data = plan_json(tmp_path, policy, "--profile", "roomy")
    assert data["profile"] == "roomy"
    assert data["memory_headroom"] == 0.4  # its own
    # kaggle's rules (a small single-threaded caller: start_method auto forks)
    assert labels(data) == ["process(3) start_method=fork", "thread(2)", "sequential"]
    # kaggle's budget table, merged key by key: still enabled, with this profile's size.
    assert (data["budget"]["enabled"], data["budget"]["size"]) == (True, 3)


def test_a_chain_of_extends_and_a_builtin_extended_under_its_own_name(tmp_path: Path) -> None:
    policy = """
[profiles.base]
extends = "kaggle"
memory_headroom = "30%"

[profiles.child]
extends = "base"
[[profiles.child.rules]]
ladder = ["thread:1"]

[profiles.kaggle]
extends = "kaggle"
memory_headroom = "35%"
"""
    child = plan_json(tmp_path, policy, "--profile", "child")
    assert labels(child) == ["thread(1)", "sequential"]  # its own rules replace the parent's
    assert child["memory_headroom"] == 0.3  # from base
    assert child["budget"]["enabled"] is True  # from kaggle, through base
    kaggle = plan_json(tmp_path, policy, "--profile", "kaggle")
    assert kaggle["memory_headroom"] == 0.35
    assert labels(kaggle) == ["process(3) start_method=fork", "thread(2)", "sequential"]


def test_a_cycle_is_one_error_naming_the_file_and_key(tmp_path: Path) -> None:
    policy = """
[profiles.a]
extends = "b"
[profiles.b]
extends = "a"
"""
    line = policy_error(plan(tmp_path, policy, "--profile", "a"), tmp_path, "profiles.b.extends")
    assert "cycle (a → b → a)" in line


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ('extends = "kagle"', "unknown profile 'kagle'; profiles it can extend: kaggle, laptop"),
        ('extends = "mine"', "extends itself only to extend the built-in one of its name"),
        ("extends = 3", "expected the name of a profile to extend, found 3"),
    ],
)
def test_a_bad_parent_is_one_error_naming_the_file_and_key(
    tmp_path: Path, body: str, phrase: str
) -> None:
    out = plan(tmp_path, f"[profiles.mine]\n{body}\n")
    assert phrase in policy_error(out, tmp_path, "profiles.mine.extends")


BIG_BOX = """
[profiles.big-box]
extends = "server"
when = { min_cpus = 8 }
memory_headroom = "20%"

[profiles.ci-box]
when = { env = "ci" }
[[profiles.ci-box.rules]]
ladder = ["thread:2"]

[profiles.from-big-box]
extends = "big-box"
"""


@pytest.mark.parametrize(
    ("env", "profile", "why"),
    [
        (
            {"STEPDOWN_CPUS": "8"},
            "big-box",
            "auto: the 'when' of profile big-box holds: 8 CPUs >= 8",
        ),
        ({"STEPDOWN_CPUS": "8", "CI": "1"}, "big-box", "the 'when' of profile big-box holds"),
        ({"CI": "true"}, "ci-box", "auto: the 'when' of profile ci-box holds: in ci"),
        ({}, "laptop", "auto: 4 CPUs (< 16), not Ray or Kaggle"),
    ],
)
def test_auto_picks_the_first_user_profile_whose_when_holds(
    tmp_path: Path, env: dict[str, str], profile: str, why: str
) -> None:
    data = plan_json(tmp_path, BIG_BOX, **env)
    assert data["profile"] == profile
    assert why in data["profile_source"]


def test_a_profile_when_cannot_count_tasks(tmp_path: Path) -> None:
    policy = """
[profiles.small]
when = { tasks_below = 10 }
[[profiles.small.rules]]
ladder = ["thread:2"]
"""
    line = policy_error(plan(tmp_path, policy), tmp_path, "profiles.small.when")
    assert "before the task count is known" in line
