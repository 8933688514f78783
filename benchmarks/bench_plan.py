"""How long planning takes: the pure plan with a warm probe, and each step around it.

    python -m benchmarks.bench_plan

Target: planning with a warm probe under 1 ms. Timings are medians of many calls (timeit).
"""

from __future__ import annotations

import statistics
import timeit

from stepdown.planning.planner import make_plan
from stepdown.planning.policy import choose_profile, load_policy
from stepdown.planning.resources import probe
from stepdown.planning.setup import plan


def best(stmt: object, number: int = 200, repeat: int = 7) -> float:
    times = timeit.repeat(stmt, number=number, repeat=repeat)  # type: ignore[arg-type]
    return statistics.median(t / number for t in times)


def main() -> None:
    policy = load_policy()
    resources = probe()
    rows = []
    rows.append(("probe(), cold (every source read)", best(lambda: probe(), number=20)))
    rows.append(("probe(max_age=1.0), warm", best(lambda: probe(max_age=1.0))))
    for name in ("laptop", "kaggle", "server", "ray"):
        profile, why = choose_profile(policy, name, resources=resources)
        rows.append(
            (
                f"make_plan, {name} profile, 40 tasks",
                best(
                    lambda p=profile, w=why: make_plan(policy, p, resources, 40, profile_source=w)
                ),
            )
        )
    rows.append(
        ("plan(tasks=40): load policy, warm probe, choose, plan", best(lambda: plan(tasks=40)))
    )
    print("| step | time (µs) |")
    print("|---|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1e6:.1f} |")
    warm = rows[-1][1]
    verdict = "PASS" if warm < 1e-3 else "MISS"
    print(f"\n{verdict}  planning with a warm probe: {warm * 1e6:.0f} µs; target < 1000 µs")


if __name__ == "__main__":
    main()
