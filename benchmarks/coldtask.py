"""The task of ``benchmarks/bench_cold.py``, in a module that imports nothing.

Every variant of that benchmark imports ``spin`` from here by module name, so a worker that
unpickles it by reference imports this file and nothing else, as it would a user's own small
module: what a cold script pays on top of its loop is the pool's cost, not the task's imports.
"""

from __future__ import annotations


def spin(item: tuple[int, int]) -> int:
    """``stepdown.cli.bench.burn(rounds)`` started at ``seed``: CPU work that holds the GIL.

    A copy of ``burn``'s loop rather than a call to it: importing ``stepdown.cli.bench`` would
    import stepdown into the plain loop and into every peer's workers. ``calibrate`` times
    ``burn``, so the two loops must stay the same; ``bench_cold`` checks that they agree.
    The seed makes every result different, so that results out of order do not pass the check.
    """
    rounds, seed = item
    total = seed
    for i in range(rounds):
        total = (total + i * i) % 1_000_003
    return total
