"""A scoring job as users write it: one function, many samples, the policy picks the ladder.

python examples/scoring.py            # the active profile (auto)
STEPDOWN_PROFILE=kaggle python examples/scoring.py
"""

from __future__ import annotations

import logging
import math

import stepdown


def score_sample(sample: int) -> float:
    """Stands in for real scoring: a few milliseconds of CPU, a deterministic result."""
    total = 0.0
    for i in range(20_000 + 500 * (sample % 7)):
        total += math.sin(sample + i) ** 2
    return total


if __name__ == "__main__":  # process rungs start workers that import this file
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    print(stepdown.plan(tasks=200).explain())
    run = stepdown.run(score_sample, range(200), progress=None)
    print(f"best sample: {max(range(200), key=run.results.__getitem__)}")
    print(run.report)
