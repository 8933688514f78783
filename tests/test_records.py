"""``@record`` behaves as the ``@dataclass`` it stands in for: each check is made on a record
and on the same class made by ``@dataclass``, and the two must agree."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from stepdown.records import record


def _frozen(make: Any) -> Any:
    @make(frozen=True)
    class Point:
        x: int
        y: int = 0
        label: str = field(default="", repr=False, compare=False)
        tags: list[str] = field(default_factory=list, hash=False)

    return Point


def _mutable(make: Any) -> Any:
    @make
    class Tally:
        name: str
        count: int = 0
        hidden: int = field(default=0, repr=False)

        def __post_init__(self) -> None:
            self.count = max(self.count, 0)

    return Tally


MAKERS = [pytest.param(record, id="record"), pytest.param(dataclass, id="dataclass")]


def _twins(shape: Any) -> tuple[Any, Any]:
    made = shape(record)
    twin = shape(dataclass)
    made.__qualname__ = twin.__qualname__ = shape.__name__.strip("_").title()
    return made, twin


def test_a_frozen_record_shows_compares_and_hashes_as_a_dataclass() -> None:
    made, twin = _twins(_frozen)
    for args, kwargs in [((1,), {}), ((1, 2), {"label": "a", "tags": ["t"]})]:
        a, b = made(*args, **kwargs), twin(*args, **kwargs)
        assert repr(a) == repr(b)
        assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert made(1, 2, label="a") == made(1, 2, label="b")  # label does not compare
    assert made(1, 2) != made(1, 3)
    assert made(1, 2) != twin(1, 2)  # another class: not equal, as between dataclasses
    assert hash(made(1, 2, tags=["a"])) == hash(made(1, 2, tags=["b"]))  # tags do not hash
    assert {made(1, 2), made(1, 2), made(2, 2)} == {made(1, 2), made(2, 2)}
    assert dataclasses.replace(made(1, 2), y=5) == made(1, 5)
    assert [f.name for f in dataclasses.fields(made)] == ["x", "y", "label", "tags"]


@pytest.mark.parametrize("make", MAKERS)
def test_a_frozen_record_cannot_change(make: Any) -> None:
    point = _frozen(make)(1)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'x'"):
        point.x = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.other = 2  # not a field: refused too
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'y'"):
        del point.y
    assert point.x == 1 and point.y == 0


@pytest.mark.parametrize("make", MAKERS)
def test_a_mutable_record_changes_and_is_not_hashable(make: Any) -> None:
    tally_class = _mutable(make)
    tally = tally_class("a", -3)
    assert tally.count == 0  # __post_init__ ran
    tally.count += 2
    assert tally == tally_class("a", 2)
    with pytest.raises(TypeError, match="unhashable"):
        hash(tally)


def test_a_mutable_record_shows_as_a_dataclass() -> None:
    made, twin = _twins(_mutable)
    assert repr(made("a", 1, 9)) == repr(twin("a", 1, 9)) == "Mutable(name='a', count=1)"


def test_a_method_the_class_writes_itself_wins() -> None:
    @record(frozen=True)
    class Named:
        name: str

        def __repr__(self) -> str:
            return f"<{self.name}>"

    assert repr(Named("x")) == "<x>"


def test_a_cold_run_compiles_one_method_per_record() -> None:
    """What records are for: a first ``stepdown.map`` in a fresh interpreter has dataclasses
    compile only each record's ``__init__``."""
    code = (
        "import dataclasses, collections\n"
        "made = collections.Counter()\n"
        "create = dataclasses._create_fn\n"
        "def counted(name, *args, **kwargs):\n"
        "    made[name] += 1\n"
        "    return create(name, *args, **kwargs)\n"
        "dataclasses._create_fn = counted\n"
        "import stepdown\n"
        "stepdown.map(abs, range(6))\n"
        "print(sorted(made))\n"
    )
    if not hasattr(dataclasses, "_create_fn"):
        pytest.skip("this Python's dataclasses compile their methods another way")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "['__init__']", done.stdout
