"""Values derived from immutable objects, kept by the object's identity.

A process decides on the same remembered events again and again (service/cache.py hands back
the same objects), so what is derived from one of them (a claim's busy entry, its read-model row)
is worth building once. Pure: a memo of a pure function; bounded, cleared when full.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByIdentity(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        # id -> (the object, kept alive so that its id is not reused, and its value)
        self._known: dict[int, tuple[K, V]] = {}

    def get(self, obj: K, make: Callable[[K], V]) -> V:
        known = self._known.get(id(obj))
        if known is not None and known[0] is obj:
            return known[1]
        if len(self._known) >= self.size:
            self._known.clear()
        value = make(obj)
        self._known[id(obj)] = (obj, value)
        return value
