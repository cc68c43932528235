"""A small in-process LRU whose entries also expire: for credentials verified recently."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most `max_size` entries (least recently used dropped first), each kept for the
    lifetime given when it was put, measured on the monotonic clock."""

    def __init__(self, max_size: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._max_size = max_size
        self._monotonic = monotonic
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        valid_until, value = entry
        if self._monotonic() >= valid_until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def keys(self) -> list[K]:
        """Every key held, least recently used first (expired ones included until touched)."""
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def put(self, key: K, value: V, lifetime: float) -> None:
        if lifetime <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (self._monotonic() + lifetime, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_size:
            self._entries.popitem(last=False)
