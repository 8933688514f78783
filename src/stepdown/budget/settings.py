"""A profile's ``budget`` table, typed: whether instances share a host budget, and how."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from ..records import record
from ..units import bad_variable, variable

__all__ = [
    "ENV_SIZE",
    "ENV_SWITCH",
    "MAX_SLOTS",
    "ON_EXHAUSTED",
    "BudgetSettings",
    "OnExhausted",
    "host_workers",
]

OnExhausted = Literal["step-down", "wait"]
ON_EXHAUSTED: tuple[OnExhausted, ...] = ("step-down", "wait")
ENV_SWITCH = "STEPDOWN_BUDGET"
ENV_SIZE = "STEPDOWN_HOST_WORKERS"
# The most slots a budget may have: a slot is a concurrent task and a file, and a pass over a
# full budget opens every one. As many as Linux allows CPUs (NR_CPUS).
MAX_SLOTS = 8192

_ON = ("1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no")


@record(frozen=True)
class BudgetSettings:
    """``enabled``: coordinate with other instances on this host (every profile does unless it
    says ``enabled = false``: an instance cannot know it is alone). ``size``: worker slots
    (``None``: the CPUs this process may use). ``on_exhausted``: with no slot free,
    ``"step-down"`` to the next rung (the last one always gets its slot) or ``"wait"`` up to
    ``wait`` seconds for one.
    """

    enabled: bool = True
    size: int | None = None
    on_exhausted: OnExhausted = "step-down"
    wait: float = 30.0

    @property
    def wait_seconds(self) -> float:
        """How long a rung waits for slots: ``wait`` when it waits, else 0."""
        return self.wait if self.on_exhausted == "wait" else 0.0

    def switched(self, environ: Mapping[str, str]) -> bool:
        """Whether the budget is on: ``STEPDOWN_BUDGET=on|off`` overrides ``enabled``."""
        switch = variable(environ, ENV_SWITCH)
        if switch is None:
            return self.enabled
        if switch.lower() in _ON:
            return True
        if switch.lower() in _OFF:
            return False
        raise bad_variable(ENV_SWITCH, switch, "expected on or off (or 1/0, true/false, yes/no)")


def host_workers(environ: Mapping[str, str], default: int) -> int:
    """The budget's size: ``STEPDOWN_HOST_WORKERS`` if set, else ``default``. Raises
    :class:`UsageError` for a value that is not a whole number from 1 to :data:`MAX_SLOTS`."""
    text = variable(environ, ENV_SIZE)
    if text is None:
        return default
    # The length keeps int() cheap on a megabyte of digits, which is out of range anyway.
    size = int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else 0
    if not 1 <= size <= MAX_SLOTS:
        raise bad_variable(
            ENV_SIZE, text, f"expected a whole number of slots from 1 to {MAX_SLOTS}"
        )
    return size
