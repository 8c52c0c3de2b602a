"""A second shared store, in memory: proof that the store seam is real. It passes the same
contract suite as the Redis store, and ``SignedURLs`` and ``CacheService`` run on it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

from sqla_signed_urls.cache.base import SharedStore, Subscription, Write


class MemoryBackend:
    """What several stores (prefixes, processes in a test) share: data and subscribers."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes, float]] = {}
        self.index: dict[str, dict[str, int]] = {}
        self.counters: dict[str, dict[str, int]] = {}
        self.subscribers: dict[str, list[queue.Queue[tuple[str, str]]]] = {}
        self.lock = threading.Lock()


class MemoryStore(SharedStore):
    """``SharedStore`` over a :class:`MemoryBackend`; values expire by their TTL."""

    errors = (ConnectionError,)

    def __init__(self, backend: MemoryBackend, prefix: str) -> None:
        self.backend = backend
        self.prefix = prefix

    def _live(self, key: str) -> bytes | None:
        held = self.backend.values.get(key)
        if held is None or held[1] <= time.time():
            self.backend.values.pop(key, None)
            return None
        return held[0]

    @property
    def _index(self) -> dict[str, int]:
        return self.backend.index.setdefault(self.prefix, {})

    def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]:
        with self.backend.lock:
            return [self._live(key) for key in keys]

    def set_many(self, items: Sequence[Write]) -> None:
        with self.backend.lock:
            for key, value, ttl, until in items:
                self.backend.values[key] = (value, time.time() + ttl)
                self._index[key] = until

    def delete_many(self, keys: Sequence[str]) -> int:
        with self.backend.lock:
            removed = sum(self._live(key) is not None for key in keys)
            for key in keys:
                self.backend.values.pop(key, None)
                self._index.pop(key, None)
            return removed

    def clear(self) -> int:
        keys = [key for batch in self.scan_keys() for key in batch]
        with self.backend.lock:
            self._index.clear()
        return self.delete_many(keys)

    def scan_keys(self, count: int = 1000) -> Iterable[list[str]]:
        with self.backend.lock:
            keys = [
                k for k in list(self.backend.values) if k.startswith(self.prefix) and self._live(k)
            ]
        for start in range(0, len(keys), count):
            yield keys[start : start + count]

    def live_count(self, now: int) -> int:
        with self.backend.lock:
            return sum(until > now for until in self._index.values())

    def expiring(self, now: int, until: int, batch: int) -> Iterator[list[str]]:
        with self.backend.lock:
            for key in [k for k, end in self._index.items() if end <= now]:
                del self._index[key]
            keys = sorted(k for k, end in self._index.items() if now < end <= until)
        for start in range(0, len(keys), batch):
            yield keys[start : start + batch]

    def renew(self, items: Sequence[Write], gone: Sequence[str]) -> int:
        renewed = 0
        with self.backend.lock:
            for key, value, ttl, until in items:
                if self._live(key) is not None:
                    self.backend.values[key] = (value, time.time() + ttl)
                    self._index[key] = until
                    renewed += 1
                else:
                    self._index.pop(key, None)
            for key in gone:
                self._index.pop(key, None)
        return renewed

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        with self.backend.lock:
            totals = self.backend.counters.setdefault(self.prefix, {})
            for name, delta in deltas.items():
                totals[name] = totals.get(name, 0) + delta

    def read_counters(self) -> dict[str, int]:
        with self.backend.lock:
            return dict(self.backend.counters.get(self.prefix, {}))

    def memory_used(self) -> int | None:
        return None

    def publish(self, message: str) -> None:
        with self.backend.lock:
            for inbox in self.backend.subscribers.get(self.prefix, []):
                inbox.put(("message", message))

    def subscribe(self) -> Subscription:
        inbox: queue.Queue[tuple[str, str]] = queue.Queue()
        inbox.put(("subscribed", ""))
        with self.backend.lock:
            self.backend.subscribers.setdefault(self.prefix, []).append(inbox)
        return _MemorySubscription(self, inbox)


class _MemorySubscription(Subscription):
    def __init__(self, store: MemoryStore, inbox: queue.Queue[tuple[str, str]]) -> None:
        self.store = store
        self.inbox = inbox

    def next_event(self, timeout: float) -> tuple[str, str] | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        with self.store.backend.lock:
            inboxes = self.store.backend.subscribers.get(self.store.prefix, [])
            if self.inbox in inboxes:
                inboxes.remove(self.inbox)
