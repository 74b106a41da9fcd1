"""A bounded in-process LRU (first cache tier). Single-threaded use from the event loop."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """Least-recently-used map holding at most `capacity` entries (0 disables it)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._data: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str) -> V | None:
        """The value, marked most recently used, or None."""
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        """Insert or refresh; evicts the least recently used entry when full."""
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Drop every entry."""
        self._data.clear()
