"""Value equality and a readable repr for the qcow2 metadata records (header, snapshot-table entry), from the field
names a class lists in `_FIELDS`: what dataclasses would give, without importing dataclasses (it brings inspect
and ast, more start-up time than `vireo img snapshot`'s whole operation; bench/snapshot.py)."""
from __future__ import annotations


class PlainRecord:
    _FIELDS: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]   # mutable records: unhashable, as a dataclass with eq is

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._FIELDS)
        return f"{type(self).__name__}({fields})"
