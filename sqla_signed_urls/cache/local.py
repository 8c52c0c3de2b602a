"""The in-process layer (L1): a bounded LRU of entries, kept in step across processes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["LocalCache"]

#: ``(object_key, url, cache_until)``: served only while the row still has that object key.
LocalEntry = tuple[str, str, float]


class LocalCache:
    """A thread-safe bounded LRU mapping cache keys to :data:`LocalEntry` tuples.

    Reads take no lock (``OrderedDict`` operations are atomic under the GIL); writes and
    evictions do, so the size bound holds under concurrency::

        cache = LocalCache(maxsize=10_000)
        cache.set("file_url:1", ("a.png", "https://...", time.time() + 60))
        cache.get("file_url:1")
    """

    __slots__ = ("_data", "_lock", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[str, LocalEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> LocalEntry | None:
        entry = self._data.get(key)
        if entry is not None:
            try:  # noqa: SIM105 - suppress() costs a call on the hot path
                self._data.move_to_end(key)
            except KeyError:  # evicted by another thread in between
                pass
        return entry

    def set(self, key: str, entry: LocalEntry) -> None:
        with self._lock:
            self._data[key] = entry
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def set_many(self, items: Iterable[tuple[str, LocalEntry]]) -> None:
        """Store many entries at once. They are keys the caller just missed, so a key already
        present (put there by another thread meanwhile) keeps its place in the LRU order."""
        data = self._data
        with self._lock:
            data.update(items)
            while len(data) > self.maxsize:
                data.popitem(last=False)

    def discard(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
