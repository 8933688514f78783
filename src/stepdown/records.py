"""``@record``: a dataclass that a cold start neither compiles nor imports ``dataclasses`` for.

On Python 3.11 a ``@dataclass(frozen=True)`` compiles six methods from source as its module is
imported, ~0.5 ms a class, and ``import dataclasses`` imports ``inspect`` and ``ast``: the 34
classes on the path of a first ``stepdown.map`` cost a cold script ~23 ms that way, and their
objects made its exit slower too. A record takes the same class body and the same ``field()``
arguments, and behaves as the dataclass would: an ``__init__`` that takes the fields in order
(defaults, ``default_factory``, ``init=False``, then ``__post_init__``), the same ``repr``,
``==`` and ``hash`` (``repr``/``compare``/``hash`` of a field honoured), a frozen record
refuses to change with :class:`dataclasses.FrozenInstanceError`, a mutable one that compares
by value is unhashable. Its methods are written once, below, and read each class's fields.

``dataclasses.fields``, ``asdict``, ``replace`` and ``is_dataclass`` work on records too: the
``__dataclass_fields__`` they read is made by ``dataclasses`` itself, the first time something
asks. :func:`replace` and :func:`field_names` here do the same without importing it. A type
checker sees the dataclass. Classes off that path (the CLI, the demo, Ray's and joblib's) stay
dataclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

__all__ = ["field", "field_names", "record", "replace"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class _Field:
    """One field as ``field()`` declares it (``dataclasses.Field``'s options, the ones used)."""

    __slots__ = ("compare", "default", "default_factory", "hash", "init", "name", "repr", "type")

    def __init__(
        self,
        default: Any = MISSING,
        default_factory: Any = MISSING,
        init: bool = True,
        repr: bool = True,
        hash: bool | None = None,
        compare: bool = True,
    ) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.default, self.default_factory = default, default_factory
        self.init, self.repr, self.hash, self.compare = init, repr, hash, compare
        self.name = ""
        self.type: Any = None

    @property
    def required(self) -> bool:
        return self.default is MISSING and self.default_factory is MISSING


class _Shape:
    """A record class's fields, and the lists its shared methods read."""

    def __init__(self, cls: type, fields: list[_Field]) -> None:
        self.fields = tuple(fields)
        self.init = tuple(f for f in fields if f.init)
        self.init_names = frozenset(f.name for f in self.init)
        self.later = tuple(f for f in fields if not f.init and not f.required)
        self.repr = tuple(f.name for f in fields if f.repr)
        self.compare = tuple(f.name for f in fields if f.compare)
        self.hash = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
        self.post_init = getattr(cls, "__post_init__", None) is not None
        self.dataclass_fields: dict[str, Any] | None = None


_SHAPES: dict[type, _Shape] = {}


def _shape(cls: type) -> _Shape:
    for klass in cls.__mro__:  # an undecorated subclass has its record's shape
        shape = _SHAPES.get(klass)
        if shape is not None:
            return shape
    raise TypeError(f"{cls.__qualname__} is not a record")


def _is_class_var(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return isinstance(text, str) and text.rpartition(".")[2].startswith("ClassVar")


def _make(cls: type, frozen: bool) -> type:
    fields: dict[str, _Field] = {}
    for base in reversed(cls.__mro__[1:]):
        if base in _SHAPES:
            fields.update((f.name, f) for f in _SHAPES[base].fields)
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - inspect is a cost
    for name, annotation in annotations.items():
        if _is_class_var(annotation):
            continue
        value = cls.__dict__.get(name, MISSING)
        spec = value if isinstance(value, _Field) else _Field(default=value)
        spec.name, spec.type = name, annotation
        if isinstance(value, _Field):  # the class attribute is the default, as with dataclasses
            if spec.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        if spec.default is not MISSING and type(spec.default).__hash__ is None:
            raise ValueError(
                f"mutable default {type(spec.default)} for field {name} is not allowed: "
                "use default_factory"
            )
        fields[name] = spec
    defaulted = False
    for spec in fields.values():
        if spec.init and spec.required and defaulted:
            raise TypeError(f"non-default argument {spec.name!r} follows default argument")
        defaulted = defaulted or (spec.init and not spec.required)
    shape = _SHAPES[cls] = _Shape(cls, list(fields.values()))
    if cls.__dict__.get("__hash__", MISSING) is None and "__eq__" in cls.__dict__:
        delattr(cls, "__hash__")  # set by Python for the __eq__ the class wrote, not by it
    methods: dict[str, Any] = {
        "__init__": _init,
        "__repr__": _repr,
        "__eq__": _eq,
        "__hash__": _hash if frozen else None,
        "__match_args__": tuple(f.name for f in shape.init),
        "__dataclass_fields__": _DataclassFields(),
    }
    if frozen:
        methods.update(__setattr__=_setattr, __delattr__=_delattr)
    for name, method in methods.items():
        if name not in cls.__dict__:  # what the class writes itself wins, as with @dataclass
            setattr(cls, name, method)
    return cls


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    shape = _shape(type(self))
    if len(args) > len(shape.init):
        given, takes = len(args) + 1, len(shape.init) + 1
        _wrong(self, f"takes {takes} positional arguments but {given} were given")
    values = {f.name: value for f, value in zip(shape.init, args, strict=False)}
    for key, value in kwargs.items():
        if key in values:
            _wrong(self, f"got multiple values for argument {key!r}")
        if key not in shape.init_names:
            _wrong(self, f"got an unexpected keyword argument {key!r}")
        values[key] = value
    missing = [f.name for f in shape.init if f.name not in values and f.required]
    if missing:
        _wrong(self, f"missing required arguments: {', '.join(map(repr, missing))}")
    for spec in (*shape.init, *shape.later):
        if spec.name in values:
            value = values[spec.name]
        elif spec.default_factory is not MISSING:
            value = spec.default_factory()
        else:
            value = spec.default
        object.__setattr__(self, spec.name, value)
    if shape.post_init:
        self.__post_init__()


def _wrong(self: object, why: str) -> NoReturn:
    raise TypeError(f"{type(self).__qualname__}.__init__() {why}")


def _repr(self: object) -> str:
    names = _shape(type(self)).repr
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: object, other: object) -> object:
    if other.__class__ is not self.__class__:
        return NotImplemented
    names = _shape(type(self)).compare
    return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)


def _hash(self: object) -> int:
    return hash(tuple(getattr(self, name) for name in _shape(type(self)).hash))


def _setattr(self: object, name: str, value: Any) -> None:
    # Its __init__ gives each field its value once (object.__setattr__); nothing changes after.
    import dataclasses

    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: object, name: str) -> None:
    import dataclasses

    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


class _DataclassFields:
    """``__dataclass_fields__``, made by ``dataclasses`` from the record's fields the first
    time it is read (``dataclasses.fields``, ``asdict``, ``replace``, ``is_dataclass``)."""

    def __get__(self, instance: object, owner: type) -> dict[str, Any]:
        shape = _shape(owner)
        if shape.dataclass_fields is None:
            import dataclasses

            def given(value: Any) -> Any:
                return dataclasses.MISSING if value is MISSING else value

            body: dict[str, Any] = {"__annotations__": {f.name: f.type for f in shape.fields}}
            for f in shape.fields:
                body[f.name] = dataclasses.field(
                    default=given(f.default),
                    default_factory=given(f.default_factory),
                    init=f.init,
                    repr=f.repr,
                    hash=f.hash,
                    compare=f.compare,
                )
            twin: Any = dataclasses.dataclass(type(owner.__name__, (), body), repr=False, eq=False)
            shape.dataclass_fields = dict(twin.__dataclass_fields__)
        return shape.dataclass_fields


def field_names(cls: type, *, init_only: bool = False) -> tuple[str, ...]:
    """The names of a record's fields (those its ``__init__`` takes, with ``init_only``)."""
    shape = _shape(cls)
    return tuple(f.name for f in (shape.init if init_only else shape.fields))


if TYPE_CHECKING:  # a type checker sees the dataclass a record behaves as
    from dataclasses import dataclass as record
    from dataclasses import field, replace
else:

    def record(cls=None, /, *, frozen=False):
        """``@record`` or ``@record(frozen=True)``, in place of the same ``@dataclass``."""
        return (lambda cls: _make(cls, frozen)) if cls is None else _make(cls, frozen)

    def field(**options):
        """``dataclasses.field`` for a record: ``default``, ``default_factory``, ``init``,
        ``repr``, ``hash``, ``compare``."""
        return _Field(**options)

    def replace(obj, /, **changes):
        """``dataclasses.replace`` for a record: a copy with ``changes``, made by its
        ``__init__`` (so its ``__post_init__`` checks run again)."""
        for spec in _shape(type(obj)).fields:
            if not spec.init:
                if spec.name in changes:
                    raise ValueError(f"field {spec.name} is declared with init=False")
            elif spec.name not in changes:
                changes[spec.name] = getattr(obj, spec.name)
        return type(obj)(**changes)
