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


# -- start_method = "auto" ---------------------------------------------------------------------

MiB = 1024**2
FORKS = ("fork", "spawn", "forkserver")


def auto_plan(
    profile: str,
    *,
    threads: int = 0,
    rss: int = 40 * MiB,
    free: int = 16 * GiB,
    commit_left: int | None = None,
    start_method: str | None = None,
    names: tuple[str, ...] = (),
) -> Plan:
    from stepdown.planning.launch import Launch

    launch = Launch(FORKS, "fork", None, threads, commit_left, names)
    return make_plan(
        BUILTIN,
        BUILTIN.profiles[profile],
        resources(cpus=2, free=free, rss=rss),
        100,
        launch=launch,
        start_method=start_method,
    )


def first(p: Plan) -> tuple[str, dict[str, object], str]:
    rung = p.rungs[0]
    return rung.rung.backend, dict(rung.rung.options), rung.reason


def test_auto_forks_a_small_single_threaded_caller() -> None:
    backend, options, reason = first(auto_plan("kaggle"))
    assert (backend, options) == ("process", {"start_method": "fork"})
    assert "start_method auto: fork, no other thread, a 40.0 MiB caller, 16.0 GiB free" in reason
    backend, options, _ = first(auto_plan("server"))
    assert (backend, options) == ("process", {"start_method": "fork"})


def test_auto_starts_fresh_interpreters_beside_other_threads() -> None:
    backend, options, reason = first(auto_plan("kaggle", threads=3))
    assert (backend, options) == ("loky", {})
    assert "start_method auto: loky, the caller runs 3 other threads" in reason
    assert "(a native library's, such as a BLAS or OpenMP pool)" in reason
    backend, options, reason = first(auto_plan("server", threads=1, names=("uploader",)))
    assert (backend, options) == ("process", {"start_method": "forkserver"})
    assert "start_method auto: forkserver, the caller runs 1 other thread (uploader)" in reason


def test_auto_starts_fresh_interpreters_for_a_caller_big_next_to_free_memory() -> None:
    # Two forks of a 3 GiB notebook could take 6 of 10 GiB: more than half.
    backend, _, reason = first(auto_plan("kaggle", rss=3 * GiB, free=10 * GiB))
    assert backend == "loky"
    assert "2 forks of a 3.0 GiB caller could take more than half of 10.0 GiB free" in reason
    # Strict overcommit: what the kernel still lets processes commit counts too.
    backend, _, reason = first(auto_plan("kaggle", rss=300 * MiB, commit_left=1 * GiB))
    assert backend == "loky"
    assert "1.0 GiB free or committable (strict overcommit)" in reason


def test_the_callers_start_method_wins_over_auto() -> None:
    backend, options, reason = first(auto_plan("server", start_method="spawn"))
    assert (backend, options) == ("process", {"start_method": "spawn"})
    assert "auto" not in reason
    # On a loky rung: fork makes it a fork-started process pool, a fresh method keeps loky.
    backend, options, _ = first(auto_plan("kaggle", threads=2, start_method="fork"))
    assert (backend, options) == ("process", {"start_method": "fork"})
    backend, options, _ = first(auto_plan("kaggle", start_method="forkserver"))
    assert (backend, options) == ("loky", {})


@pytest.mark.timeout(60)
def test_a_cold_script_forks_and_a_threaded_one_starts_loky(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import json, sys, threading, time, stepdown\n"
        "if sys.argv[1] == 'threaded':\n"
        "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "run = stepdown.run(abs, range(-20, 0), profile='kaggle')\n"
        "print(json.dumps([run.results[:3], run.report.final_rung]))\n"
    )
    found = {}
    for mode in ("plain", "threaded"):
        (tmp_path / mode).mkdir(mode=0o700)
        out = subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            timeout=50,
            # A runtime directory each: nothing learned from the other's run.
            env={**plan_module.os.environ, "XDG_RUNTIME_DIR": str(tmp_path / mode)},
        )
        assert out.returncode == 0, out.stderr[-2000:]
        found[mode] = json.loads(out.stdout.splitlines()[-1])
    assert found["plain"] == [[20, 19, 18], "process(2)"]
    assert found["threaded"] == [[20, 19, 18], "loky(2)"]


# -- expected work against start-up ------------------------------------------------------------


def test_a_rung_that_cannot_pay_for_its_start_is_skipped_with_the_figures() -> None:
    costs = {"fork": 0.025, "thread": 0.003, "loky": 0.2}
    small = make_plan(
        BUILTIN, BUILTIN.profiles["laptop"], resources(cpus=2), 20, work=0.0002, start_costs=costs
    )
    assert [p.workers for p in small.rungs] == [0, 0, 1]
    assert small.rungs[0].reason == (
        "expected work 4 ms (20 tasks of 200 µs in earlier runs) would save 2 ms on 2 workers, "
        "less than the 25 ms it takes to start"
    )
    # Enough work: every rung as before.
    big = make_plan(
        BUILTIN, BUILTIN.profiles["laptop"], resources(cpus=2), 2000, work=0.001, start_costs=costs
    )
    assert [p.workers for p in big.rungs] == [2, 2, 1]
    # A ladder the caller gave is run as given; so is a plan with nothing learned.
    given = parse_policy_ladder(["process:2", "thread:2"], "test", "ladder")
    asked = make_plan(
        BUILTIN,
        BUILTIN.profiles["laptop"],
        resources(cpus=2),
        20,
        ladder=given,
        work=0.0002,
        start_costs=costs,
    )
    assert [p.workers for p in asked.rungs] == [2, 2, 1]
    unknown = make_plan(BUILTIN, BUILTIN.profiles["laptop"], resources(cpus=2), 20)
    assert [p.workers for p in unknown.rungs] == [2, 2, 1]


@pytest.mark.timeout(90)
def test_a_script_run_again_plans_with_what_its_tasks_took(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "score.py"
    script.write_text(
        "import json, stepdown\n"
        "def score(x):\n"
        "    return x * 2\n"
        'if __name__ == "__main__":\n'
        "    run = stepdown.run(score, range(30))\n"
        "    rungs = [r.label for r in run.report.rungs]\n"
        "    print(json.dumps([run.results[:3], rungs, str(run.report)]))\n"
    )
    env = {**plan_module.os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "STEPDOWN_CPUS": "2"}
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
        )
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.splitlines()[-1]))
    first_results, first_rungs, _ = runs[0]
    again_results, again_rungs, report = runs[1]
    assert first_results == again_results == [0, 2, 4]
    assert first_rungs == ["process(2)"]  # nothing known yet: the plan as ever
    # 30 tasks of a few µs cannot pay for a pool: the plan skips both and says why.
    assert again_rungs == ["process(auto)", "thread(auto)", "sequential"]
    assert "skipped (expected work" in report, report
