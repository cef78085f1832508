"""`Record` and `Frozen`: what batchstore's records use of a dataclass, without creating one.

Creating a dataclass runs the code it generates for each of its methods: about 0.6 ms per class, paid
at every start of a process that imports it. The records a send needs before its first C-STORE are
named tuples where tuple behaviour is harmless, and subclasses of these where it is not: a field named
``index``, `part10.Instance` (its objects keep a ``__dict__`` that `sender.plan` fills directly),
`sender.report.Outcome` (changed in place) (docs/design.md, "Small runs").
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from operator import attrgetter
from typing import Self

__all__ = ["Frozen", "Record"]

_set = object.__setattr__


class Record:
    """Equality, ``repr`` and ``_replace`` over the names in `_fields`, as a dataclass has them; not
    hashable, as a dataclass that is not frozen. ``_replace(**changes)`` does what ``dataclasses.replace``
    did. A subclass lists `_fields` and writes its own ``__init__``."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _getter: attrgetter[tuple]  # the fields' values as a tuple, in C

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if cls._fields:
            cls._getter = attrgetter(*cls._fields)

    def _set(self, *values: object) -> None:
        for name, value in zip(self._fields, values, strict=True):
            _set(self, name, value)

    def _values(self) -> tuple:
        return self._getter(self)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._getter(self) == self._getter(other)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self._values(), strict=True))
        return f"{type(self).__name__}({shown})"

    def _replace(self, **changes: object) -> Self:
        return type(self)(**{name: changes.pop(name, getattr(self, name)) for name in self._fields}, **changes)


class Frozen(Record):
    """A `Record` that is hashable and refuses assignment after ``__init__``, which sets each field with
    ``object.__setattr__`` (or `_set`), as a frozen dataclass does."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self._getter(self))

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
