"""The policy loader: format, errors (source and key path), precedence, profile choice."""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepdown.errors import PolicyError
from stepdown.planning.planner import make_plan
from stepdown.planning.policy import (
    Conditions,
    Policy,
    builtin_text,
    choose_profile,
    load_policy,
    parse_policy_ladder,
)
from stepdown.planning.resources import Environment, Reading, Resources
from stepdown.planning.rung import Rung

GiB = 1024**3


def resources(
    cpus: int | None = 4,
    free: int | None = 8 * GiB,
    *,
    kaggle: bool = False,
    ci: bool = False,
    ray_address: str | None = None,
    container: bool = False,
) -> Resources:
    return Resources(
        cpus=Reading(cpus, "test"),
        memory_available=Reading(free, "test"),
        memory_limit=Reading(None, "test"),
        tasks_left=Reading(None, "test"),
        shm_free=Reading(None, "test"),
        caller_rss=Reading(GiB, "test"),
        env=Environment(kaggle=kaggle, ci=ci, ray_address=ray_address, container=container),
        cgroup_version=None,
        cgroup_paths={},
    )


def valid() -> dict[str, Any]:
    """A small valid user table (the seed's kaggle table)."""
    return {
        "profile": "mine",
        "profiles": {
            "mine": {
                "description": "the seed's table",
                "memory_per_worker": "auto",
                "memory_headroom": "15%",
                "budget": {"enabled": True, "size": 4, "on_exhausted": "wait", "wait": 1.5},
                "rules": [
                    {"when": {"tasks_below": 4}, "ladder": ["thread:3", "sequential"]},
                    {"ladder": ["loky:3", "thread:2", "sequential"]},
                ],
            }
        },
    }


def with_change(path: str, value: Any) -> dict[str, Any]:
    """``valid()`` with the value at a dotted path (``rules[1]`` indexes a list) replaced."""
    table = valid()
    node: Any = table
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    node[int(last) if last.isdigit() else last] = value
    return table


RULES = "profiles.mine.rules"

# (the change, the key path the error names, a phrase the message has)
ERRORS = [
    ("profil", "mine", "profil", "allowed: profile, profiles"),
    ("profiles.mine.memory", 1, "profiles.mine.memory", "allowed: description, memory_per_worker"),
    (f"{RULES}[1].if", 1, f"{RULES}[1].if", "allowed: when, ladder"),
    (
        f"{RULES}[0].when.tasks_under",
        4,
        f"{RULES}[0].when.tasks_under",
        "allowed: tasks_below, tasks_at_least, min_free_memory, min_cpus, env",
    ),
    ("profiles.mine.memory_headroom", [15], "profiles.mine.memory_headroom", "found an array"),
    ("profiles.mine.memory_headroom", "150%", "profiles.mine.memory_headroom", "below 1"),
    ("profiles.mine.memory_per_worker", "lots", "profiles.mine.memory_per_worker", "not a size"),
    ("profiles.mine.memory_per_worker", 0, "profiles.mine.memory_per_worker", "'none'"),
    ("profiles.mine.description", 3, "profiles.mine.description", "expected a string"),
    (f"{RULES}[0].when.tasks_below", "4", f"{RULES}[0].when.tasks_below", "whole number"),
    (f"{RULES}[0].when.tasks_below", 0, f"{RULES}[0].when.tasks_below", ">= 1, not 0"),
    (f"{RULES}[0].when.tasks_below", True, f"{RULES}[0].when.tasks_below", "a boolean"),
    (f"{RULES}[0].when.min_cpus", -2, f"{RULES}[0].when.min_cpus", ">= 1, not -2"),
    (f"{RULES}[0].when.min_free_memory", "1 lot", f"{RULES}[0].when.min_free_memory", "size"),
    (f"{RULES}[0].when.env", "colab", f"{RULES}[0].when.env", "'kaggle', 'ci', 'ray'"),
    (f"{RULES}[0].when.env", ["ci", "colab"], f"{RULES}[0].when.env[1]", "'container'"),
    (f"{RULES}[0].when.env", [], f"{RULES}[0].when.env", "non-empty list"),
    (f"{RULES}[0].when", "always", f"{RULES}[0].when", "expected a table"),
    (f"{RULES}[1].ladder[0]", "lokyy:3", f"{RULES}[1].ladder[0]", "known backends: sequential"),
    (
        f"{RULES}[1].ladder[0]",
        {"backend": "lokyy"},
        f"{RULES}[1].ladder[0].backend",
        "unknown backend 'lokyy'",
    ),
    (f"{RULES}[1].ladder[0]", {"backend": [1]}, f"{RULES}[1].ladder[0].backend", "unknown"),
    (f"{RULES}[1].ladder[0]", {"workers": 3}, f"{RULES}[1].ladder[0]", "'backend' key"),
    (f"{RULES}[1].ladder[1]", "thread:-2", f"{RULES}[1].ladder[1]", "at least 1, not -2"),
    (f"{RULES}[1].ladder[1]", "thread:0", f"{RULES}[1].ladder[1]", "at least 1, not 0"),
    (f"{RULES}[1].ladder[1]", "thread:two", f"{RULES}[1].ladder[1]", "positive whole number"),
    (
        f"{RULES}[1].ladder[0]",
        {"backend": "loky", "workers": 0},
        f"{RULES}[1].ladder[0].workers",
        "at least 1",
    ),
    (
        f"{RULES}[1].ladder[0]",
        {"backend": "loky", "start_method": "fork"},
        f"{RULES}[1].ladder[0].start_method",
        "'fork' is not one of auto (loky starts its workers its own way)",
    ),
    (
        f"{RULES}[1].ladder[0]",
        {"backend": "process", "start_method": "vfork"},
        f"{RULES}[1].ladder[0].start_method",
        "fork, forkserver, spawn",
    ),
    (
        f"{RULES}[1].ladder[0]",
        {"backend": "process", "fraction": 1.5},
        f"{RULES}[1].ladder[0].fraction",
        "at most 1",
    ),
    (
        f"{RULES}[1].ladder[0]",
        {"backend": "process", "memory_per_worker": "-1GiB"},
        f"{RULES}[1].ladder[0].memory_per_worker",
        "not a size",
    ),
    (f"{RULES}[1].ladder[0]", 3, f"{RULES}[1].ladder[0]", "a rung is a string"),
    (f"{RULES}[1].ladder", [], f"{RULES}[1].ladder", "at least one rung"),
    (f"{RULES}[1].ladder", "loky:3", f"{RULES}[1].ladder", "expected an array of rungs"),
    (f"{RULES}[1]", {}, f"{RULES}[1].ladder", "a rule needs a 'ladder'"),
    (f"{RULES}[1]", {"when": {"env": "ci"}, "ladder": ["thread"]}, f"{RULES}[1].when", "last rule"),
    (RULES, [], RULES, "at least one rule"),
    (RULES, {"ladder": ["thread"]}, RULES, "expected an array of rule tables"),
    ("profiles.mine", [], "profiles.mine", "expected a table"),
    ("profiles.auto", {"rules": [{"ladder": ["thread"]}]}, "profiles.auto", "reserved"),
    ("profiles.my profile", {"rules": [{"ladder": ["thread"]}]}, "profiles.my profile", "letters"),
    ("profiles", ["mine"], "profiles", "expected a table"),
    ("profile", "nope", "profile", "known profiles: auto, kaggle, laptop, mine, ray, server"),
    ("profile", 3, "profile", "a profile name"),
    ("profiles.mine.budget", {"size": 0}, "profiles.mine.budget.size", ">= 1"),
    ("profiles.mine.budget", {"wait": -1}, "profiles.mine.budget.wait", ">= 0"),
    ("profiles.mine.budget", {"enabled": "yes"}, "profiles.mine.budget.enabled", "true or false"),
    (
        "profiles.mine.budget",
        {"on_exhausted": "crash"},
        "profiles.mine.budget.on_exhausted",
        "'step-down', 'wait'",
    ),
    (
        "profiles.mine.budget",
        {"slots": 3},
        "profiles.mine.budget.slots",
        "allowed: enabled, size, on_exhausted, wait",
    ),
]


def test_the_valid_table_loads() -> None:
    policy = load_policy(valid())
    mine = policy.profiles["mine"]
    assert policy.default_profile == "mine"
    assert policy.source == "argument (dict)"
    assert mine.rules[0].when == Conditions(tasks_below=4)
    assert mine.rules[0].ladder == (Rung("thread", 3), Rung("sequential", 1))
    assert mine.rules[1].ladder == (Rung("loky", 3), Rung("thread", 2), Rung("sequential", 1))
    assert mine.memory_headroom == pytest.approx(0.15)
    assert mine.budget.on_exhausted == "wait"


@pytest.mark.parametrize(("path", "value", "key", "phrase"), ERRORS, ids=[e[2] for e in ERRORS])
def test_errors_name_source_and_key(path: str, value: Any, key: str, phrase: str) -> None:
    table = valid() if path == "profil" else with_change(path, value)
    if path == "profil":
        table["profil"] = value
    with pytest.raises(PolicyError) as caught:
        load_policy(table)
    error = caught.value
    assert (error.source, error.key) == ("<dict>", key)
    assert str(error).startswith(f"<dict>, {key}: ")
    assert phrase in str(error)


def test_a_missing_rules_key_is_named() -> None:
    table = valid()
    del table["profiles"]["mine"]["rules"]
    with pytest.raises(PolicyError, match=r"profiles\.mine\.rules: a profile needs 'rules'"):
        load_policy(table)


def test_toml_syntax_errors_give_path_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "stepdown.toml"
    path.write_text('[profiles.x]\n\n[[profiles.x.rules]]\nladder = ["loky:3" "thread"]\n')
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.source == str(path)
    assert caught.value.key is None
    assert "not valid TOML" in str(caught.value)
    assert "line 4, column 20" in str(caught.value)


def test_file_errors_point_at_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[[profiles.x.rules]]\nladder = ["loky:-3"]\n')
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert (caught.value.source, caught.value.key) == (str(path), "profiles.x.rules[0].ladder[0]")


def test_pyproject_errors_name_the_tool_section(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[[tool.stepdown.profiles.x.rules]]\nladder = ["fast"]\n'
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(cwd=tmp_path, environ={})
    assert caught.value.source == str(tmp_path / "pyproject.toml")
    assert caught.value.key == "tool.stepdown.profiles.x.rules[0].ladder[0]"
    assert "unknown backend 'fast'" in str(caught.value)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyError, match="cannot read the policy file") as caught:
        load_policy(environ={"STEPDOWN_POLICY": str(missing)}, cwd=tmp_path)
    assert caught.value.source == str(missing)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'profile = "\xff"\n')
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(binary)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path)


def test_an_integer_too_long_to_print_is_still_a_policy_error() -> None:
    huge = {"backend": "thread", "workers": -(10**5000)}
    with pytest.raises(PolicyError) as caught:
        load_policy(with_change(f"{RULES}[1].ladder[0]", huge))
    assert caught.value.key == f"{RULES}[1].ladder[0]"
    with pytest.raises(PolicyError, match="too long to show"):
        load_policy(with_change(f"{RULES}[0].when.tasks_below", -(10**5000)))


def test_a_policy_of_the_wrong_type_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="not int"):
        load_policy(3)  # type: ignore[arg-type]


# -- built-ins --------------------------------------------------------------------------------


def test_builtins_load_and_end_in_an_unconditional_rule() -> None:
    policy = load_policy(environ={}, cwd=os.devnull)
    assert policy.source == "built-in"
    assert set(policy.profiles) == {"laptop", "kaggle", "server", "ray"}
    for profile in policy.profiles.values():
        assert profile.rules[-1].when.always
        for rule in profile.rules:
            assert rule.ladder[-1] == Rung("sequential", 1)
        assert profile.description


def test_builtin_ladders() -> None:
    profiles = load_policy(environ={}, cwd=os.devnull).profiles
    kaggle = profiles["kaggle"]
    assert kaggle.memory_headroom == pytest.approx(0.25)
    assert kaggle.rules[0].when == Conditions(tasks_below=4)
    assert [str(r) for r in kaggle.rules[0].ladder] == ["thread(3)", "sequential"]
    assert [str(r) for r in kaggle.rules[1].ladder] == ["loky(3)", "thread(2)", "sequential"]
    assert kaggle.rules[1].ladder[0].options == {"start_method": "auto"}
    laptop = profiles["laptop"].rules[1].ladder
    assert laptop[0] == Rung("process", None, {"start_method": "fork"})
    server = profiles["server"].rules[1].ladder
    assert server[0].options == {"start_method": "auto"}
    assert server[1].options == {"start_method": "auto", "fraction": 0.5}
    assert [r.backend for r in profiles["ray"].rules[0].ladder] == [
        "ray",
        "loky",
        "thread",
        "sequential",
    ]


def test_builtin_text_is_in_the_docs() -> None:
    docs = Path(__file__).parent.parent / "docs" / "policy.md"
    assert builtin_text().strip() in docs.read_text()


def test_the_builtin_json_is_the_builtin_toml() -> None:
    """A cold script reads the built-in policy from ``builtin.json``, not the TOML the docs
    show: the two must say the same."""
    import json

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    assert json.loads(builtin_text("builtin.json")) == tomllib.loads(builtin_text()), (
        "builtin.json is stale; write it again from builtin.toml: "
        'python -c \'import json, tomllib; p = "src/stepdown/planning/policy/builtin"; '
        'open(p + ".json", "w").write(json.dumps(tomllib.load(open(p + ".toml", '
        '"rb")), indent=2) + "\\n")\''
    )


# Ways a pyproject.toml may hold [tool.stepdown], or only look as if it might.
_HOLDS = [
    '[tool.stepdown]\nprofile = "kaggle"\n',
    '[ tool . "stepdown" ]\nprofile = "kaggle"\n',
    '[[tool.stepdown.profiles.kaggle.rules]]\nladder = ["thread:1"]\n[tool.stepdown]\n'
    'profile = "kaggle"\n',
    '[tool]\nstepdown.profile = "kaggle"\n',
    '[tool]\n"stepdown" = { profile = "kaggle" }\n',
    'tool = { stepdown = { profile = "kaggle" } }\n',
    'tool.stepdown.profile = "kaggle"  # the notebook one\n',
]
_HOLDS_NOT = [
    '[project]\nname = "stepdown"\ndependencies = [\n  "stepdown>=1",\n]\n',
    '[project.scripts]\nstepdown = "stepdown.cli:main"\n',
    '[tool.poetry.dependencies]\nstepdown = "^1"\n',
    '[tool.stepdownish]\nprofile = "kaggle"\n',
    "[project\n",  # not even TOML: not stepdown's to judge
]


@pytest.mark.parametrize("text", _HOLDS)
def test_every_way_to_write_the_tool_section_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEPDOWN_POLICY", raising=False)
    (tmp_path / "pyproject.toml").write_text(text)
    policy = load_policy()
    assert policy.source.startswith("pyproject.toml [tool.stepdown]"), policy.source
    assert policy.default_profile == "kaggle"


@pytest.mark.parametrize("text", _HOLDS_NOT)
def test_a_pyproject_without_the_tool_section_is_not_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """Checked in a fresh interpreter: nothing imports the TOML reader (~5 ms of a cold
    script's start) for a project that has no policy of its own."""
    import subprocess

    (tmp_path / "pyproject.toml").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "STEPDOWN_POLICY"}
    code = (
        "import sys; from stepdown.planning.policy import load_policy; "
        "print(load_policy().source, 'tomllib' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["built-in", "False"], done.stdout + done.stderr


# -- precedence -------------------------------------------------------------------------------


def _write_policy(path: Path, name: str, section: str = "") -> None:
    path.write_text(f'[[{section}profiles.{name}.rules]]\nladder = ["thread:1"]\n')


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEPDOWN_POLICY", raising=False)
    assert load_policy().source == "built-in"

    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_policy().source == "built-in"  # a pyproject without [tool.stepdown]

    _write_policy(tmp_path / "pyproject.toml", "from_pyproject", "tool.stepdown.")
    policy = load_policy()
    assert "from_pyproject" in policy.profiles
    assert policy.source == f"pyproject.toml [tool.stepdown] ({tmp_path / 'pyproject.toml'})"

    _write_policy(tmp_path / "stepdown.toml", "from_stepdown_toml")
    policy = load_policy()
    assert "from_stepdown_toml" in policy.profiles
    assert "from_pyproject" not in policy.profiles
    assert policy.source == f"stepdown.toml ({tmp_path / 'stepdown.toml'})"

    _write_policy(tmp_path / "env.toml", "from_env")
    monkeypatch.setenv("STEPDOWN_POLICY", "env.toml")  # relative to the working directory
    policy = load_policy()
    assert "from_env" in policy.profiles
    assert policy.source == f"STEPDOWN_POLICY ({tmp_path / 'env.toml'})"

    _write_policy(tmp_path / "arg.toml", "from_argument")
    policy = load_policy("arg.toml")
    assert "from_argument" in policy.profiles
    assert policy.source == f"argument ({tmp_path / 'arg.toml'})"
    from_dict = load_policy({"profiles": {"from_dict": valid()["profiles"]["mine"]}})
    assert "from_dict" in from_dict.profiles

    assert load_policy(policy) is policy


def test_cwd_and_environ_arguments(tmp_path: Path) -> None:
    _write_policy(tmp_path / "stepdown.toml", "here")
    assert "here" in load_policy(cwd=tmp_path, environ={}).profiles
    _write_policy(tmp_path / "other.toml", "there")
    env = {"STEPDOWN_POLICY": str(tmp_path / "other.toml")}
    assert "there" in load_policy(cwd=tmp_path, environ=env).profiles
    assert "here" in load_policy(cwd=tmp_path, environ={"STEPDOWN_POLICY": ""}).profiles


def test_a_deleted_working_directory_holds_no_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    def gone() -> str:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "getcwd", gone)
    assert load_policy(environ={}).source == "built-in"
    with pytest.raises(PolicyError, match="working directory is gone") as caught:
        load_policy("stepdown.toml", environ={})
    assert caught.value.source == "stepdown.toml"


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    _write_policy(tmp_path / "stepdown.toml", "first")
    assert "first" in load_policy(cwd=tmp_path, environ={}).profiles
    _write_policy(tmp_path / "stepdown.toml", "second")
    assert "second" in load_policy(cwd=tmp_path, environ={}).profiles


def test_user_profiles_replace_builtins_by_name() -> None:
    table = {
        "profiles": {
            "kaggle": {"rules": [{"ladder": ["thread:1"]}]},
            "extra": {"rules": [{"ladder": ["loky:2"]}], "memory_per_worker": "2GiB"},
        }
    }
    policy = load_policy(table)
    assert [str(r) for r in policy.profiles["kaggle"].rules[0].ladder] == [
        "thread(1)",
        "sequential",
    ]
    assert policy.profiles["kaggle"].memory_per_worker == "auto"
    assert policy.profiles["kaggle"].source == "argument (dict)"
    assert policy.profiles["laptop"].source == "built-in"
    assert policy.profiles["extra"].memory_per_worker == 2 * GiB
    unlimited = {"rules": [{"ladder": ["thread"]}], "memory_per_worker": "none"}
    assert load_policy({"profiles": {"x": unlimited}}).profiles["x"].memory_per_worker is None


# -- choosing a profile -----------------------------------------------------------------------


def test_profile_precedence() -> None:
    policy = load_policy(valid())  # its top-level profile is "mine"
    r = resources()
    env = {"STEPDOWN_PROFILE": "kaggle"}
    assert _choice(policy, "laptop", env, r) == ("laptop", "argument")
    assert _choice(policy, None, env, r) == ("kaggle", "STEPDOWN_PROFILE")
    assert _choice(policy, None, {}, r) == ("mine", "'profile' in argument (dict)")
    builtin = load_policy(environ={}, cwd=os.devnull)
    assert _choice(builtin, None, {}, r) == ("laptop", "auto: 4 CPUs (< 16), not Ray or Kaggle")


def _choice(
    policy: Policy, name: str | None, env: Mapping[str, str], r: Resources
) -> tuple[str, str]:
    profile, why = choose_profile(policy, name, environ=env, resources=r)
    return profile.name, why


@pytest.mark.parametrize(
    ("env", "r", "name", "why"),
    [
        (
            {"RAY_ADDRESS": "auto"},
            resources(ray_address="auto", kaggle=True),
            "ray",
            "auto: RAY_ADDRESS is set",
        ),
        (
            {},
            resources(ray_address="10.0.0.1:6379"),
            "ray",
            "auto: a Ray address was found (10.0.0.1:6379)",
        ),
        (
            {"KAGGLE_KERNEL_RUN_TYPE": "Batch"},
            resources(cpus=64, kaggle=True),
            "kaggle",
            "auto: KAGGLE_KERNEL_RUN_TYPE is set",
        ),
        (
            {},
            resources(kaggle=True),
            "kaggle",
            "auto: a Kaggle environment was detected (/kaggle/working)",
        ),
        ({}, resources(cpus=16), "server", "auto: 16 CPUs (>= 16)"),
        ({}, resources(cpus=15), "laptop", "auto: 15 CPUs (< 16), not Ray or Kaggle"),
        ({}, resources(cpus=None), "laptop", "auto: CPU count unknown, not Ray or Kaggle"),
    ],
)
def test_auto_says_why(env: dict[str, str], r: Resources, name: str, why: str) -> None:
    policy = load_policy(environ={}, cwd=os.devnull)
    assert _choice(policy, None, env, r) == (name, why)


def test_auto_asked_for_explicitly_keeps_where_it_came_from() -> None:
    policy = load_policy({"profile": "auto"})
    env = {"STEPDOWN_PROFILE": "auto"}
    assert _choice(policy, None, env, resources(cpus=32)) == (
        "server",
        "STEPDOWN_PROFILE = auto; 32 CPUs (>= 16)",
    )
    assert _choice(policy, None, {}, resources(cpus=2))[1].startswith("'profile' in argument")


def test_unknown_profiles() -> None:
    policy = load_policy(environ={}, cwd=os.devnull)
    with pytest.raises(PolicyError) as caught:
        choose_profile(policy, None, environ={"STEPDOWN_PROFILE": "colab"}, resources=resources())
    assert caught.value.source == "STEPDOWN_PROFILE"
    assert "unknown profile 'colab'; known profiles: auto, kaggle, laptop, ray, server" in str(
        caught.value
    )
    with pytest.raises(PolicyError, match=r"^argument: unknown profile 'x'"):
        choose_profile(policy, "x", environ={}, resources=resources())


# -- conditions -------------------------------------------------------------------------------


def test_conditions() -> None:
    r = resources(cpus=4, free=2 * GiB, kaggle=True)
    assert Conditions().holds(5, r) == (True, "always")
    assert Conditions(tasks_below=4).holds(3, r) == (True, "3 tasks < 4")
    assert Conditions(tasks_below=4).holds(4, r) == (False, "4 tasks, not below 4")
    assert Conditions(tasks_below=4).holds(None, r)[0] is False
    assert Conditions(tasks_at_least=10).holds(None, r)[0] is True
    assert Conditions(tasks_at_least=10).holds(9, r) == (False, "9 tasks, fewer than 10")
    assert Conditions(min_cpus=8).holds(1, r) == (False, "4 CPUs, fewer than 8")
    assert Conditions(min_cpus=8).holds(1, resources(cpus=None))[0] is False
    assert Conditions(min_free_memory=GiB).holds(1, r) == (True, "2.0 GiB free >= 1.0 GiB")
    assert Conditions(min_free_memory=4 * GiB).holds(1, r)[0] is False
    assert Conditions(min_free_memory=1).holds(1, resources(free=None))[0] is False
    assert Conditions(env=("ci", "kaggle")).holds(1, r) == (True, "in kaggle")
    assert Conditions(env=("ray",)).holds(1, r) == (False, "not in ray")
    assert Conditions(env=("container",)).holds(1, resources(container=True))[0] is True
    both = Conditions(tasks_below=4, env=("kaggle",))
    assert both.holds(2, r) == (True, "2 tasks < 4; in kaggle")
    assert both.describe() == "tasks_below = 4, env = kaggle"
    assert Conditions().describe() == "always"


def test_when_is_parsed_into_conditions() -> None:
    when = {
        "tasks_below": 100,
        "tasks_at_least": 2,
        "min_free_memory": "1.5GiB",
        "min_cpus": 2,
        "env": ["kaggle", "ci"],
    }
    table = {
        "profiles": {"p": {"rules": [{"when": when, "ladder": ["thread"]}, {"ladder": ["thread"]}]}}
    }
    rule = load_policy(table).profiles["p"].rules[0]
    assert rule.when == Conditions(100, 2, int(1.5 * GiB), 2, ("kaggle", "ci"))


def test_ladders_given_in_code() -> None:
    assert parse_policy_ladder(["loky:2"], "ladder argument", "ladder") == (
        Rung("loky", 2),
        Rung("sequential", 1),
    )
    with pytest.raises(PolicyError, match=r"^ladder argument, ladder\[0\]: unknown backend"):
        parse_policy_ladder(["fast"], "ladder argument", "ladder")


# -- property: nothing but PolicyError leaves the loader --------------------------------------

KEYS = [
    "profile", "profiles", "rules", "when", "ladder", "backend", "workers", "start_method",
    "fraction", "memory_per_worker", "memory_headroom", "budget", "description", "tasks_below",
    "tasks_at_least", "min_free_memory", "min_cpus", "env", "enabled", "size", "on_exhausted",
    "wait", "kaggle", "mine", "auto", "address", "max_retries", "reuse",
]  # fmt: skip
WORDS = [
    "loky", "loky:3", "loky:-3", "thread:auto", "thread:", "process:0", "sequential", "ray",
    "fork", "vfork", "auto", "none", "1.5GiB", "15%", "150%", "-1", "kaggle", "ci", "wait",
    "step-down", "9" * 400 + "GiB", ":", "",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(WORDS)
    | st.text(max_size=12)
)
keys = st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(-2, 2)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)


def _outcome(policy: object) -> None:
    """Loading gives a PolicyError or a policy; a policy that loads plans, on every profile,
    whatever the task count (nothing else may escape either step)."""
    try:
        loaded = load_policy(policy, environ={}, cwd=os.devnull)  # type: ignore[arg-type]
    except PolicyError:
        return
    assert isinstance(loaded, Policy)
    for profile in loaded.profiles.values():
        for tasks in (None, 0, 3, 1000):
            chosen = make_plan(loaded, profile, resources(), tasks)
            assert chosen.rungs and chosen.usable_rungs()[-1].info.last


@settings(max_examples=250, deadline=None)
@given(values)
def test_random_tables_give_policy_errors_only(table: object) -> None:
    if isinstance(table, (str, os.PathLike)):
        table = {"profiles": table}  # a string would be a path: keep to tables here
    _outcome(table if isinstance(table, Mapping) else {"profiles": {"p": table}})


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_mutated_tables_give_policy_errors_only(data: st.DataObject) -> None:
    table: Any = copy.deepcopy(valid())
    table["profiles"]["builtin_like"] = {
        "rules": [
            {
                "ladder": [
                    {"backend": "process", "start_method": "fork", "fraction": 0.5},
                    {"backend": "ray", "address": "auto", "max_retries": 2, "reuse": True},
                ]
            }
        ]
    }
    for _ in range(data.draw(st.integers(1, 4))):
        paths = _paths(table)[1:]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent: Any = table
        for step in path[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["delete", "replace", "add", "negate"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = data.draw(values)
        elif action == "negate" and isinstance(parent[path[-1]], (int, float)):
            parent[path[-1]] = -parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(keys)] = data.draw(values)
        else:
            parent.append(data.draw(values))
    _outcome(table)


FRAGMENTS = [
    'profile = "kaggle"', 'profile = "x"', "[profiles.x]", "[[profiles.x.rules]]",
    'ladder = ["loky:3", "thread:2"]', 'ladder = ["lokyy"]', "ladder = []",
    "when = { tasks_below = 4 }", "when = { env = \"colab\" }", 'memory_headroom = "15%"',
    'memory_per_worker = "auto"', "memory_per_worker = -1", "[profiles.x.budget]", "size = 0",
    "[tool.stepdown]", "x = 1979-05-27T07:32:00Z", 'ladder = [{ backend = "process" }]',
    "ladder = [{ backend = 3 }]", "description = 'd'", "[profiles.auto]", "= =", "[[",
]  # fmt: skip


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("toml") / "stepdown.toml"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(FRAGMENTS) | st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
        max_size=8,
    )
)
def test_random_toml_gives_policy_errors_only(scratch: Path, lines: list[str]) -> None:
    scratch.write_text("\n".join(lines), encoding="utf-8")
    _outcome(scratch)
