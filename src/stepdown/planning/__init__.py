"""Deciding: rungs, the policy, what the machine can afford, and the plan made from them.

:mod:`.rung` parses rungs; :mod:`.policy` loads and checks the policy; :mod:`.resources` (with
:mod:`.cgroup` and :mod:`.reading`) probes the machine; :mod:`.planner` makes a :class:`.plan.Plan`
from them, purely; :mod:`.setup` does all of it once for a run.
"""
