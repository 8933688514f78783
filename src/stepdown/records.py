"""``@record``: a dataclass whose methods cost a cold start one compile instead of six.

On Python 3.11 a ``@dataclass(frozen=True)`` compiles six methods from source as its module is
imported (``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``,
``__delattr__``), ~0.5 ms a class: the 34 classes on the path of a first ``stepdown.map`` cost
a cold script ~18 ms that way, and ~6 ms as records.

A record is a dataclass with only its ``__init__`` compiled; the other methods are shared,
written once below, and behave as the generated ones: fields with ``repr``/``compare``/``hash``
set to False are left out as there, a frozen record refuses to change a field with
:class:`dataclasses.FrozenInstanceError`, and a mutable record that compares by value is
unhashable. ``dataclasses.fields``, ``replace`` and ``asdict`` work on records as on any
dataclass. Classes off that path (the CLI, the demo, Ray's and joblib's) stay dataclasses.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

__all__ = ["record"]

if TYPE_CHECKING:  # a type checker sees the dataclass it behaves as
    from dataclasses import dataclass as record
else:

    def record(cls=None, /, *, frozen=False):
        """``@record`` or ``@record(frozen=True)``, in place of the same ``@dataclass``."""

        def make(cls):
            made = dataclasses.dataclass(cls, repr=False, eq=False)
            _set(made, "__repr__", _repr)
            _set(made, "__eq__", _eq)
            if frozen:
                _set(made, "__setattr__", _setattr)
                _set(made, "__delattr__", _delattr)
                _set(made, "__hash__", _hash)
            else:
                _set(made, "__hash__", None)
            return made

        return make if cls is None else make(cls)


def _set(cls: type, name: str, value: Any) -> None:
    if name not in cls.__dict__:  # a method the class writes itself wins, as with @dataclass
        setattr(cls, name, value)


# The field names each shared method reads, per class, worked out once.
_NAMES: dict[tuple[type, str], tuple[str, ...]] = {}


def _names(cls: type, kind: str) -> tuple[str, ...]:
    """The names of ``cls``'s fields that ``kind`` ("repr", "compare", "hash", "all") takes."""
    names = _NAMES.get((cls, kind))
    if names is None:
        fields = dataclasses.fields(cls)
        if kind == "hash":
            chosen = [f for f in fields if (f.compare if f.hash is None else f.hash)]
        else:
            chosen = [f for f in fields if kind == "all" or getattr(f, kind)]
        names = _NAMES[(cls, kind)] = tuple(f.name for f in chosen)
    return names


def _values(self: object, kind: str) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in _names(type(self), kind))


def _repr(self: object) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _names(type(self), "repr"))
    return f"{type(self).__qualname__}({shown})"


def _eq(self: object, other: object) -> object:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self, "compare") == _values(other, "compare")


def _hash(self: object) -> int:
    return hash(_values(self, "hash"))


def _setattr(self: object, name: str, value: Any) -> None:
    # Its __init__ (or __post_init__) gives each field its value once; nothing changes after.
    if name in self.__dict__ or name not in _names(type(self), "all"):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _delattr(self: object, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
