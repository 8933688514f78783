"""Every run option, declared once: its type, its default and its check.

``run``, ``map``, ``imap``, ``Executor`` and the joblib backend take these as keyword arguments
(typed by the ``TypedDict`` s below, so a misspelt option fails ``mypy``) and build one frozen
:class:`Options`, checked once, that the setup and the runner read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypedDict

from .errors import UsageError
from .planning.policy import PolicySpec, parse_policy_ladder
from .planning.rung import START_METHODS, Rung
from .records import field, field_names, record
from .units import parse_size

__all__ = [
    "BackendOptions",
    "Errors",
    "ExecutorOptions",
    "LadderSpec",
    "MemoryErrors",
    "Options",
    "RunOptions",
]

Errors = Literal["raise", "return"]
MemoryErrors = Literal["step-down", "raise"]
LadderSpec = Sequence[str | Rung | Mapping[str, Any]] | str


class ExecutorOptions(TypedDict, total=False):
    """The options :class:`stepdown.Executor` takes by keyword only (see :class:`Options`);
    it takes ``ProcessPoolExecutor``'s own (``max_workers``, ...) as that does."""

    profile: str | None
    policy: PolicySpec
    task_memory: int | str | None
    task_timeout: float | None
    max_tasks_per_child: int | None
    start_method: str | None
    stall_timeout: float
    memory_error: MemoryErrors
    reuse: bool


class BackendOptions(ExecutorOptions, total=False):
    """The options of the joblib backend ``"stepdown"``: the executor's, a ladder, a worker
    cap and an initializer."""

    ladder: LadderSpec | None
    max_workers: int | None
    initializer: Callable[..., object] | None
    initargs: Sequence[Any]


class RunOptions(BackendOptions, total=False):
    """The options ``run``, ``map`` and ``imap`` take by keyword, besides their own."""

    batch_size: int | None


@record(frozen=True)
class Options:
    """How a run chooses its ladder and behaves. Every field is checked on construction; a bad
    value is a :class:`~stepdown.errors.UsageError` naming the option and the value.

    ``ladder`` (e.g. ``["loky:3", "thread:2"]``) replaces the policy's rules; otherwise
    ``profile`` and ``policy`` choose one (see the policy docs). ``max_workers`` caps every
    rung's workers, keeping the policy. ``task_memory`` (e.g. ``"300MiB"``) declares what one
    task holds; the plan sizes rungs with it. ``task_timeout`` (seconds) bounds each task: one
    that runs longer gets :class:`~stepdown.errors.TaskTimeout` as its outcome (its worker
    process is killed and replaced; on thread and sequential rungs it is abandoned, still
    running). ``initializer`` is called with ``initargs`` in each worker before its first task
    (once per thread on the thread rung, once in the caller on sequential); if it raises, the
    run raises :class:`~stepdown.errors.InitializerFailed`. ``max_tasks_per_child``: no worker
    process runs more tasks than this; its pool is then renewed (ignored in-process).
    ``start_method`` (``"fork"``, ``"forkserver"``, ``"spawn"``) is every process rung's,
    whatever the policy says, even where its workers cannot rebuild ``__main__`` (the plan then
    says so; unset, such rungs start by fork there). ``errors``: ``"raise"`` the first task
    exception, or ``"return"`` it in the task's place. ``ordered``: results in input order, or
    as they complete. ``progress``: a bar on stderr naming the rung that runs (``None``: where
    a person is watching, a terminal or a notebook, not in CI, once the run has lasted a
    second). ``stall_timeout`` bounds how long dead executor machinery may hold tasks before it
    counts as a failure.
    ``memory_error``: whether a ``MemoryError`` raised inside a task steps down (a rung with
    fewer workers may fit) or is the task's error. ``batch_size`` fixes the tasks per batch
    (default: adaptive). ``reuse`` keeps a healthy pool warm for the next call.
    """

    ladder: LadderSpec | None = None
    profile: str | None = None
    policy: PolicySpec = None
    max_workers: int | None = None
    task_memory: int | str | None = None
    task_timeout: float | None = None
    initializer: Callable[..., object] | None = None
    initargs: Sequence[Any] = ()
    max_tasks_per_child: int | None = None
    start_method: str | None = None
    errors: Errors = "raise"
    ordered: bool = True
    progress: bool | None = None
    stall_timeout: float = 3.0
    memory_error: MemoryErrors = "step-down"
    batch_size: int | None = None
    reuse: bool = True
    # Derived once, from the fields above.
    rungs: tuple[Rung, ...] | None = field(init=False, repr=False, compare=False)
    task_bytes: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.errors not in ("raise", "return"):
            raise UsageError(f"errors must be 'raise' or 'return', not {self.errors!r}")
        if self.memory_error not in ("step-down", "raise"):
            raise UsageError(
                f"memory_error must be 'step-down' or 'raise', not {self.memory_error!r}"
            )
        _seconds("stall_timeout", self.stall_timeout)
        if self.task_timeout is not None:
            _seconds("task_timeout", self.task_timeout)
        if self.initializer is not None and not callable(self.initializer):
            raise UsageError(f"initializer must be callable, not {self.initializer!r}")
        if not isinstance(self.initargs, (tuple, list)):
            raise UsageError(f"initargs must be a tuple, not {self.initargs!r}")
        _whole("batch_size", self.batch_size)
        _whole("max_workers", self.max_workers)
        _whole("max_tasks_per_child", self.max_tasks_per_child)
        if self.start_method is not None and self.start_method not in START_METHODS:
            raise UsageError(
                f"start_method must be one of {', '.join(START_METHODS)}, not {self.start_method!r}"
            )
        for name in ("reuse", "ordered"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if self.progress not in (True, False, None):
            raise UsageError(f"progress must be True, False or None, not {self.progress!r}")
        object.__setattr__(self, "rungs", _rungs(self.ladder))
        object.__setattr__(self, "task_bytes", _bytes(self.task_memory))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option a caller may give."""
        return field_names(cls, init_only=True)


def _seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise UsageError(f"{name} must be a positive number of seconds, not {value!r}")


def _whole(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a whole number of at least 1, not {value!r}")


def _rungs(ladder: object) -> tuple[Rung, ...] | None:
    if ladder is None:
        return None
    specs = [ladder] if isinstance(ladder, (str, Mapping, Rung)) else ladder
    return parse_policy_ladder(specs, "ladder argument", "ladder")


def _bytes(task_memory: int | str | None) -> int | None:
    if task_memory is None:
        return None
    try:
        return parse_size(task_memory)
    except (ValueError, OverflowError, TypeError) as exc:
        raise UsageError(f"task_memory: {exc}") from None
