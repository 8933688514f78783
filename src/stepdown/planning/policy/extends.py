"""A profile that ``extends`` another: the other's table, with this one's keys laid over it.

::

    [profiles.big-kaggle]
    extends = "kaggle"         # a built-in profile, or another profile of the same policy
    memory_headroom = "30%"    # a key given replaces the parent's; ``budget`` is merged key by key

The parent is looked up among the policy's own profiles first, then the built-in ones; a profile
that extends its own name (``[profiles.kaggle] extends = "kaggle"``) extends the built-in one.
``when`` is not inherited: it says when ``auto`` picks the parent, not its children.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import PolicyError
from ...units import shown

__all__ = ["lay_over"]

# Keys merged key by key rather than replaced whole: a table of independent settings.
_MERGED = ("budget",)
_NOT_INHERITED = ("extends", "when")


def lay_over(
    own: Mapping[str, Mapping[Any, Any]],
    bases: Mapping[str, Mapping[Any, Any]],
    source: str,
    prefix: str,
) -> dict[str, dict[Any, Any]]:
    """Every profile of ``own`` with what it extends laid under it, parents before their
    children (so that a mistake in a parent is reported at the parent). ``bases`` are the
    built-in tables. Raises :class:`PolicyError` naming ``source`` and the ``extends`` key of an
    unknown parent or of a cycle."""
    done: dict[str, dict[Any, Any]] = {}

    def resolve(name: str, trail: tuple[str, ...]) -> dict[Any, Any]:
        if name in done:
            return done[name]
        table = own[name]
        where = f"{prefix}profiles.{name}.extends"
        parent = table.get("extends")
        if parent is None:
            done[name] = dict(table)
            return done[name]
        if not isinstance(parent, str):
            raise PolicyError(
                f"expected the name of a profile to extend, found {shown(parent)}", source, where
            )
        if parent == name and name in bases:
            under = bases[name]
        elif parent in own and parent != name:
            if parent in trail:
                cycle = " → ".join([*trail[trail.index(parent) :], parent])
                raise PolicyError(
                    f"profiles extend each other in a cycle ({cycle}); one of them must extend "
                    "a built-in profile or none",
                    source,
                    where,
                )
            under = resolve(parent, (*trail, parent))
        elif parent in bases:
            under = bases[parent]
        else:
            known = ", ".join(sorted({*own, *bases} - {name}))
            why = (
                "a profile extends itself only to extend the built-in one of its name"
                if parent == name
                else f"unknown profile {shown(parent)}"
            )
            raise PolicyError(f"{why}; profiles it can extend: {known}", source, where)
        under = {k: v for k, v in under.items() if k not in _NOT_INHERITED}
        merged = {**under, **{k: v for k, v in table.items() if k != "extends"}}
        for key in _MERGED:
            if isinstance(under.get(key), Mapping) and isinstance(table.get(key), Mapping):
                merged[key] = {**under[key], **table[key]}
        done[name] = merged
        return merged

    for name in own:
        resolve(name, (name,))
    return done
