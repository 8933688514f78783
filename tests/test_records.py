"""``@record`` behaves as the ``@dataclass`` it stands in for: each check is made on a record
and on the same class made by ``@dataclass``, and the two must agree."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any, ClassVar

import pytest

from stepdown import records

# (decorator, field) pairs: a record's and the standard library's.
RECORD = (records.record, records.field)
DATACLASS = (dataclasses.dataclass, dataclasses.field)
BOTH = [pytest.param(RECORD, id="record"), pytest.param(DATACLASS, id="dataclass")]


def _frozen(kind: tuple[Any, Any]) -> Any:
    make, field = kind

    @make(frozen=True)
    class Frozen:
        x: int
        y: int = 0
        label: str = field(default="", repr=False, compare=False)
        tags: list[str] = field(default_factory=list, hash=False)
        kind: ClassVar[str] = "point"

    return Frozen


def _mutable(kind: tuple[Any, Any]) -> Any:
    make, field = kind

    @make
    class Mutable:
        name: str
        count: int = 0
        hidden: int = field(default=0, repr=False)
        derived: int = field(init=False, default=-1)

        def __post_init__(self) -> None:
            self.count = max(self.count, 0)
            self.derived = self.count * 2

    return Mutable


@records.record(frozen=True)
class Pinned:
    """At module level, so that pickle finds it by name."""

    x: int
    tags: tuple[str, ...] = records.field(default=(), compare=False)


def test_a_record_travels_by_pickle() -> None:
    pinned = Pinned(1, ("a",))
    back = pickle.loads(pickle.dumps(pinned))
    assert back == pinned and back.tags == ("a",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.x = 2


def test_a_frozen_record_shows_compares_and_hashes_as_a_dataclass() -> None:
    made, twin = _frozen(RECORD), _frozen(DATACLASS)
    for args, kwargs in [((1,), {}), ((1, 2), {"label": "a", "tags": ["t"]})]:
        a, b = made(*args, **kwargs), twin(*args, **kwargs)
        assert repr(a) == repr(b)
        assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert made(1, 2, label="a") == made(1, 2, label="b")  # label does not compare
    assert made(1, 2) != made(1, 3)
    assert made(1, 2) != twin(1, 2)  # another class: not equal, as between dataclasses
    assert hash(made(1, 2, tags=["a"])) == hash(made(1, 2, tags=["b"]))  # tags do not hash
    assert {made(1, 2), made(1, 2), made(2, 2)} == {made(1, 2), made(2, 2)}
    assert made(1).tags is not made(1).tags  # a fresh default each time
    assert made.kind == "point" and made.y == 0 and "tags" not in made.__dict__
    assert made.__match_args__ == twin.__match_args__ == ("x", "y", "label", "tags")


def test_the_dataclass_functions_work_on_a_record() -> None:
    made, twin = _frozen(RECORD), _frozen(DATACLASS)
    assert dataclasses.is_dataclass(made)
    names = [(f.name, f.init, f.repr, f.compare) for f in dataclasses.fields(made)]
    assert names == [(f.name, f.init, f.repr, f.compare) for f in dataclasses.fields(twin)]
    assert dataclasses.replace(made(1, 2), y=5) == made(1, 5)
    assert records.replace(made(1, 2), y=5) == made(1, 5)
    assert records.field_names(made) == ("x", "y", "label", "tags")
    mutable = _mutable(RECORD)
    assert records.field_names(mutable, init_only=True) == ("name", "count", "hidden")
    with pytest.raises(ValueError, match="init=False"):
        records.replace(mutable("a"), derived=3)


@pytest.mark.parametrize("kind", BOTH)
def test_a_frozen_record_cannot_change(kind: tuple[Any, Any]) -> None:
    point = _frozen(kind)(1)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'x'"):
        point.x = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.other = 2  # not a field: refused too
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'y'"):
        del point.y
    assert point.x == 1 and point.y == 0


@pytest.mark.parametrize("kind", BOTH)
def test_a_mutable_record_changes_and_is_not_hashable(kind: tuple[Any, Any]) -> None:
    cls = _mutable(kind)
    tally = cls("a", -3)
    assert (tally.count, tally.derived) == (0, 0)  # __post_init__ ran
    tally.count += 2
    other = cls("a")
    other.count = 2
    assert tally == other
    assert tally != cls("a", 2)  # derived differs: 0 against 4
    assert repr(cls("a", 1, 9)).endswith("Mutable(name='a', count=1, derived=2)")
    with pytest.raises(TypeError, match="unhashable"):
        hash(tally)


@pytest.mark.parametrize("kind", BOTH)
@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        ((), {}, "name"),  # missing
        (("a", 1, 2, 3), {}, "positional"),
        (("a",), {"name": "b"}, "multiple values"),
        (("a",), {"derived": 1}, "unexpected keyword"),
        (("a",), {"colour": 1}, "unexpected keyword"),
    ],
)
def test_a_wrong_call_is_a_type_error(
    kind: tuple[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(TypeError, match=says):
        _mutable(kind)(*args, **kwargs)


@pytest.mark.parametrize("kind", BOTH)
def test_a_wrong_class_is_refused_as_by_dataclass(kind: tuple[Any, Any]) -> None:
    make, _ = kind
    with pytest.raises(ValueError, match="mutable default"):

        @make
        class Shared:
            items: list[int] = []  # the mistake refused

    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):

        @make
        class Order:
            a: int = 0
            b: int


@pytest.mark.parametrize("kind", BOTH)
def test_a_method_the_class_writes_itself_wins(kind: tuple[Any, Any]) -> None:
    make, _ = kind

    @make(frozen=True)
    class Named:
        name: str

        def __repr__(self) -> str:
            return f"<{self.name}>"

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Named) and other.name.lower() == self.name.lower()

    assert repr(Named("x")) == "<x>"
    assert Named("x") == Named("X")
    assert hash(Named("x")) == hash(Named("x"))  # still hashable, by its fields
