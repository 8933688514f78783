"""Planning: worker resolution against hand-made resources, and what a plan shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepdown.errors import PolicyError, UsageError
from stepdown.planning import setup as plan_module
from stepdown.planning.plan import Plan
from stepdown.planning.planner import make_plan
from stepdown.planning.policy import (
    Conditions,
    Policy,
    Profile,
    Rule,
    choose_profile,
    load_policy,
    parse_policy_ladder,
)
from stepdown.planning.resources import Environment, Reading, Resources
from stepdown.planning.rung import Rung
from stepdown.planning.setup import plan

GiB = 1024**3


def resources(
    cpus: int | None = 8,
    free: int | None = 16 * GiB,
    *,
    tasks_left: int | None = None,
    rss: int | None = GiB,
    kaggle: bool = False,
) -> Resources:
    return Resources(
        cpus=Reading(cpus, "test cpus"),
        memory_available=Reading(free, "test memory"),
        memory_limit=Reading(None, "test"),
        tasks_left=Reading(tasks_left, "test pids"),
        shm_free=Reading(None, "test"),
        caller_rss=Reading(rss, "test rss"),
        env=Environment(kaggle=kaggle, ci=False, ray_address=None, container=False),
        cgroup_version=2,
        cgroup_paths={"memory": "/sys/fs/cgroup/job"},
    )


BUILTIN = load_policy(environ={}, cwd="/nonexistent")


def planned(
    profile: str | Profile,
    r: Resources,
    tasks: int | None,
    *,
    task_memory: int | None = None,
    rungs: list[object] | None = None,
) -> Plan:
    chosen = BUILTIN.profiles[profile] if isinstance(profile, str) else profile
    given = None if rungs is None else parse_policy_ladder(rungs, "test", "ladder")
    return make_plan(
        BUILTIN, chosen, r, tasks, profile_source="test", task_memory=task_memory, ladder=given
    )


def workers(p: Plan) -> list[tuple[str, int]]:
    return [(planned_rung.rung.backend, planned_rung.workers) for planned_rung in p.rungs]


def profile(memory_per_worker: int | str | None = "auto", headroom: float = 0.25) -> Profile:
    ladder = parse_policy_ladder(["process:auto", "thread:auto"], "test", "ladder")
    return Profile(
        "test",
        (Rule(Conditions(), ladder),),
        memory_per_worker=memory_per_worker,  # type: ignore[arg-type]
        memory_headroom=headroom,
    )


def test_one_cpu_and_2_gib_gives_process_rungs_of_at_most_one() -> None:
    r = resources(cpus=1, free=2 * GiB, rss=200 * 1024**2)
    for name in ("laptop", "kaggle", "server", "ray"):
        p = planned(name, r, 100)
        for rung in p.rungs:
            if rung.rung.backend in ("process", "loky"):
                assert rung.workers <= 1, (name, rung)
    assert workers(planned("kaggle", r, 100)) == [("loky", 1), ("thread", 1), ("sequential", 1)]


def test_tight_memory_skips_the_process_rung_with_its_reason() -> None:
    p = planned(profile(int(1.5 * GiB), headroom=0.25), resources(free=int(0.9 * GiB)), 40)
    process, thread, sequential = p.rungs
    assert process.skipped and process.workers == 0
    assert process.reason == ("needs 1.5 GiB a worker, 691.2 MiB usable (921.6 MiB free less 25%)")
    assert (thread.workers, sequential.workers) == (8, 1)
    assert p.usable_rungs() == (Rung("thread", 8), Rung("sequential", 1))
    assert "2. process(auto)" not in p.explain()
    assert "1. process(auto)  skipped: needs 1.5 GiB a worker" in p.explain()


def test_memory_fit_reason() -> None:
    p = planned(profile(int(1.5 * GiB), headroom=0.25), resources(cpus=8, free=10 * GiB), 40)
    assert p.rungs[0].workers == 5
    assert p.rungs[0].reason == (
        "5 = memory fits 5 (1.5 GiB a worker, 10.0 GiB free less 25%); within 40 tasks, 8 CPUs"
    )


def test_memory_per_worker_auto_is_the_callers_rss() -> None:
    assert (
        planned(profile("auto", 0.0), resources(free=4 * GiB, rss=2 * GiB), 40).rungs[0].workers
        == 2
    )
    unmeasured = planned(profile("auto", 0.0), resources(free=GiB, rss=None), 40)
    assert unmeasured.rungs[0].workers == 8  # an unknown footprint limits nothing
    assert planned(profile(None), resources(free=1, rss=GiB), 40).rungs[0].workers == 8
    assert planned(profile(GiB), resources(free=None), 40).rungs[0].workers == 8


def test_a_rung_may_set_its_own_memory_per_worker() -> None:
    p = planned("laptop", resources(free=8 * GiB, rss=GiB), 40,
                rungs=[{"backend": "loky", "memory_per_worker": "3GiB"}])  # fmt: skip
    assert p.rungs[0].workers == 2  # 8 GiB less 15% = 6.8 GiB, 3 GiB each
    assert "3.0 GiB a worker" in p.rungs[0].reason


def test_task_memory_limits_threads_and_adds_to_process_workers() -> None:
    r = resources(cpus=8, free=10 * GiB, rss=GiB)
    p = planned(profile(GiB, 0.0), r, 40, task_memory=2 * GiB)
    assert workers(p) == [("process", 3), ("thread", 5), ("sequential", 1)]
    assert "2.0 GiB a task" in p.rungs[1].reason
    assert "3.0 GiB a worker" in p.rungs[0].reason
    assert workers(planned(profile(GiB, 0.0), r, 40))[1] == ("thread", 8)  # not declared


def test_fewer_tasks_than_the_cap() -> None:
    p = planned("laptop", resources(cpus=8), 2)
    assert p.rule.index == 0
    assert p.rungs[0].workers == 2
    assert p.rungs[0].reason.startswith("2 = 2 tasks; within")
    p = planned("kaggle", resources(cpus=8), 5)
    assert workers(p) == [("loky", 3), ("thread", 2), ("sequential", 1)]
    assert p.rungs[0].reason.startswith("3 = cap 3; within 5 tasks, 8 CPUs")


def test_thread_rung_limited_by_tasks_left() -> None:
    p = planned("laptop", resources(cpus=8, tasks_left=4), 40, rungs=["thread"])
    assert p.rungs[0].workers == 3  # 4 left, 1 kept for the pool
    assert "pids fit 3 (1 a worker + 1, 4 left)" in p.rungs[0].reason
    p = planned("laptop", resources(cpus=8, tasks_left=1), 2)
    assert p.rungs[0].skipped
    assert p.rungs[0].reason == "needs 2 pids or threads, 1 left"
    assert p.usable_rungs() == (Rung("sequential", 1),)


def test_process_workers_cost_several_pids() -> None:
    p = planned("kaggle", resources(cpus=8, tasks_left=12), 40)
    assert workers(p) == [("loky", 2), ("thread", 2), ("sequential", 1)]  # (12 - 4) // 4
    p = planned("kaggle", resources(cpus=8, tasks_left=7), 40)
    assert p.rungs[0].skipped and p.rungs[0].reason == "needs 8 pids or threads, 7 left"


def test_the_kaggle_table() -> None:
    r = resources(cpus=4, free=12 * GiB, rss=GiB, kaggle=True)
    small = planned("kaggle", r, 3)
    assert small.rule.index == 0 and small.rule.conditions == "tasks_below = 4"
    assert small.rule.why == "3 tasks < 4"
    assert workers(small) == [("thread", 3), ("sequential", 1)]
    big = planned("kaggle", r, 40)
    assert big.rule.index == 1 and big.rule.conditions == "always"
    assert big.rule.passed_over == ("rules[0], tasks_below = 4: 40 tasks, not below 4",)
    assert workers(big) == [("loky", 3), ("thread", 2), ("sequential", 1)]
    unknown = planned("kaggle", r, None)  # a generator: many tasks
    assert unknown.rule.index == 1
    assert workers(unknown)[0] == ("loky", 3)


def test_server_half_size_rung() -> None:
    p = planned("server", resources(cpus=32, free=64 * GiB, rss=GiB), 1000)
    assert workers(p) == [("process", 32), ("process", 16), ("thread", 32), ("sequential", 1)]
    assert p.rungs[1].reason.startswith("16 = 0.5 of 32 CPUs; within")
    usable = p.usable_rungs()
    assert usable[1] == Rung("process", 16, {"start_method": "forkserver"})
    odd = planned("server", resources(cpus=3), 1000)
    assert workers(odd)[:2] == [("process", 3), ("process", 1)]


def test_a_rung_equal_to_one_above_is_skipped() -> None:
    p = planned("server", resources(cpus=1), 1000)
    assert workers(p) == [("process", 1), ("process", 0), ("thread", 1), ("sequential", 1)]
    assert p.rungs[1].reason == "same as rung 1, process(1): nothing to step down to"


def test_sequential_is_never_skipped() -> None:
    p = planned("laptop", resources(), 40, rungs=["sequential", "thread:2"])
    assert workers(p) == [("sequential", 1), ("thread", 2), ("sequential", 1)]


def test_sequential_is_always_one() -> None:
    p = planned("laptop", resources(cpus=1, free=0, tasks_left=0, rss=GiB), 10)
    assert workers(p) == [("process", 0), ("thread", 0), ("sequential", 1)]
    assert p.usable_rungs() == (Rung("sequential", 1),)


def test_no_tasks() -> None:
    p = planned("kaggle", resources(), 0)
    assert workers(p) == [("thread", 0), ("sequential", 1)]
    assert p.rungs[0].reason == "no tasks"


def test_unknown_cpus_count_as_one() -> None:
    p = planned("laptop", resources(cpus=None), 40)
    assert p.rungs[0].workers == 1
    assert "CPU count unknown, taken as 1" in p.rungs[0].reason


def test_ray_rungs_are_not_limited_by_this_host() -> None:
    r = resources(cpus=2, free=1, tasks_left=0)
    p = planned("ray", r, 40, rungs=["ray:8", "ray"])
    assert workers(p)[:2] == [("ray", 8), ("ray", 2)]
    assert "(Ray may have more)" in p.rungs[1].reason


def test_an_explicit_ladder() -> None:
    p = planned("kaggle", resources(), 40, rungs=["thread:2"])
    assert p.rule.index is None and p.rule.label == "ladder argument"
    assert workers(p) == [("thread", 2), ("sequential", 1)]
    assert "rule     ladder argument, given: the ladder was an argument" in p.explain()
    with pytest.raises(UsageError, match="at least one rung"):
        make_plan(BUILTIN, BUILTIN.profiles["kaggle"], resources(), 4, ladder=[])


def test_a_hand_built_profile_whose_rules_all_fail_runs_sequentially() -> None:
    only = Profile("x", (Rule(Conditions(min_cpus=64), (Rung("thread", 2),)),))
    p = planned(only, resources(cpus=4), 10)
    assert workers(p) == [("sequential", 1)]
    assert p.rule.label == "no rule"
    assert p.rule.passed_over == ("rules[0], min_cpus = 64: 4 CPUs, fewer than 64",)


def test_bad_arguments() -> None:
    kaggle = BUILTIN.profiles["kaggle"]
    with pytest.raises(UsageError, match="tasks must be"):
        make_plan(BUILTIN, kaggle, resources(), -1)
    with pytest.raises(UsageError, match="task_memory must be"):
        make_plan(BUILTIN, kaggle, resources(), 1, task_memory=-5)


def test_explain_shows_where_everything_came_from() -> None:
    policy = load_policy({"profiles": {"kaggle": {"rules": [{"ladder": ["loky:3"]}]}}})
    r = resources(cpus=4, free=12 * GiB, tasks_left=500, kaggle=True)
    chosen, why = choose_profile(policy, environ={"STEPDOWN_PROFILE": "kaggle"}, resources=r)
    text = make_plan(policy, chosen, r, 40, profile_source=why).explain()
    assert "  policy   argument (dict)\n" in text
    assert "  profile  kaggle (STEPDOWN_PROFILE)\n" in text
    assert "12.0 GiB free [test memory]" in text
    assert "500 pids or threads left [test pids]" in text
    assert "    1. loky(3)     3 = cap 3; within 40 tasks, 4 CPUs" in text
    assert "    2. sequential  1: one task at a time, in the caller" in text
    chosen, why = choose_profile(BUILTIN, environ={"KAGGLE_KERNEL_RUN_TYPE": "x"}, resources=r)
    text = make_plan(BUILTIN, chosen, r, 40, profile_source=why).explain()
    assert "  policy   built-in\n" in text
    assert "  profile  kaggle (auto: KAGGLE_KERNEL_RUN_TYPE is set)\n" in text


def test_to_dict_is_json() -> None:
    p = planned("server", resources(cpus=32, tasks_left=100), None, task_memory=GiB)
    data = json.loads(json.dumps(p.to_dict()))
    assert data["profile"] == "server"
    assert data["rule"] == {
        "index": 1,
        "conditions": "always",
        "why": "always",
        "passed_over": ["rules[0], tasks_below = 4: task count unknown, taken as not below 4"],
    }
    assert data["rungs"][1]["options"] == {"start_method": "forkserver", "fraction": 0.5}
    assert data["resources"]["cpus"] == {"value": 32, "source": "test cpus"}
    assert data["resources"]["env"]["kaggle"] is False
    assert [r["workers"] for r in data["rungs"]] == [p.workers for p in p.rungs]


# -- the convenience function ------------------------------------------------------------------


@pytest.fixture
def fake_probe(monkeypatch: pytest.MonkeyPatch) -> Resources:
    r = resources(cpus=4, free=8 * GiB, kaggle=True)
    monkeypatch.setattr(plan_module, "probe", lambda environ=None, max_age=0.0: r)
    return r


def test_plan_loads_probes_and_plans(fake_probe: Resources, tmp_path: Path) -> None:
    env = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}
    p = plan(tasks=3, environ=env, cwd=tmp_path)
    assert (p.profile, p.profile_source, p.policy_source) == (
        "kaggle",
        "auto: KAGGLE_KERNEL_RUN_TYPE is set",
        "built-in",
    )
    assert p.resources is fake_probe
    assert workers(p) == [("thread", 3), ("sequential", 1)]

    (tmp_path / "stepdown.toml").write_text('profile = "laptop"\n')
    p = plan(tasks=40, environ=env, cwd=tmp_path, task_memory="1GiB")
    assert p.profile == "laptop" and p.task_memory == GiB
    assert p.profile_source == f"'profile' in stepdown.toml ({tmp_path / 'stepdown.toml'})"

    p = plan(tasks=40, ladder="loky:2", profile="kaggle", environ={}, cwd=tmp_path)
    assert workers(p) == [("loky", 2), ("sequential", 1)]
    with pytest.raises(PolicyError, match=r"^ladder argument, ladder\[0\]: unknown backend"):
        plan(ladder=["fast"], environ={}, cwd=tmp_path)
    with pytest.raises(UsageError, match="task_memory"):
        plan(task_memory="lots", environ={}, cwd=tmp_path)


def test_plan_accepts_a_loaded_policy(fake_probe: Resources) -> None:
    policy = Policy(BUILTIN.profiles, "server", "mine")
    p = plan(tasks=40, policy=policy, environ={})
    assert (p.profile, p.policy_source, p.profile_source) == ("server", "mine", "'profile' in mine")
