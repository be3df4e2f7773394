"""A least-recently-used map bounded by the bytes of its values."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ByteLRU"]

logger = logging.getLogger(__name__)

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """LRU cache whose bound is the total size of the values, not their number.

    The most recently inserted value is always kept, even if it alone exceeds the bound
    (a server must be able to work on the image it just embedded).

    Args:
        max_bytes: Bound on the summed ``size_of`` of the values.
        size_of: Size in bytes of a value.
        name: Used in log messages.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int], *, name: str = "cache") -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._size_of = size_of
        self._name = name
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        """Summed size of the values held now."""
        return self._bytes

    def get(self, key: str) -> V | None:
        """The value for ``key`` (marking it most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: V) -> None:
        """Insert or replace ``key``; evict least recently used values beyond the bound."""
        size = int(self._size_of(value))
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                evicted, (_, evicted_size) = self._items.popitem(last=False)
                self._bytes -= evicted_size
                logger.debug("%s: evicted %s (%d bytes)", self._name, evicted, evicted_size)

    def pop(self, key: str) -> V | None:
        """Remove ``key``; its value or None."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._bytes -= item[1]
            return item[0]
