"""The policy: which ladder to climb, as data read from TOML (a policy file is never executed).

:mod:`.model` is the data, :mod:`.parse` checks a table and builds it (``builtin.toml`` holds
the built-in profiles), :mod:`.load` finds the policy and chooses the profile.
"""

from __future__ import annotations

from .load import AUTO_SERVER_MIN_CPUS, PolicySpec, choose_profile, load_policy
from .model import ENVIRONMENTS, Conditions, Policy, Profile, Rule
from .parse import builtin_text, parse_policy_ladder, parse_policy_rung

__all__ = [
    "AUTO_SERVER_MIN_CPUS",
    "ENVIRONMENTS",
    "Conditions",
    "Policy",
    "PolicySpec",
    "Profile",
    "Rule",
    "builtin_text",
    "choose_profile",
    "load_policy",
    "parse_policy_ladder",
    "parse_policy_rung",
]
