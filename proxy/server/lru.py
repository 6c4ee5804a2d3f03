"""A least-recently-used map bounded by the bytes its values hold, not by their count.

Used on the event loop only (no lock). Values are immutable; each is added with
its size, which the caller measures once (proxy.server.sizeof), so eviction is
O(1) per entry. A value larger than the whole budget is not kept at all: it would
push out everything else and still not fit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, size: int) -> None:
        self.pop(key)
        if size > self.budget:
            return
        self._items[key] = (value, size)
        self.size += size
        while self.size > self.budget:
            _, (_, evicted) = self._items.popitem(last=False)
            self.size -= evicted

    def pop(self, key: K) -> V | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.size -= item[1]
        return item[0]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
