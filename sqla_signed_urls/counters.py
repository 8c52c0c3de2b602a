"""Per-process counters, and how they are added up fleet-wide in the shared store."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cache.base import SharedStore

__all__ = ["COUNTERS", "Stats"]

#: Counters kept per process and added up fleet-wide in the shared store.
COUNTERS = ("hits", "misses", "signed", "errors", "sign_errors", "invalidations", "breaker_opened")


class Stats:
    """This process's counters. Increments are plain attribute adds on the hot path; the
    background thread adds what changed to the fleet-wide totals about once a second.

    >>> urls.stats.hits, urls.stats.misses
    (41, 3)
    """

    __slots__ = (*COUNTERS, "_flushed", "_lock", "writes_dropped")

    def __init__(self) -> None:
        self.hits = self.misses = self.signed = self.errors = 0
        self.sign_errors = self.invalidations = self.breaker_opened = 0
        #: Cache writes a coroutine's plain ``obj.url`` could not schedule (this process only).
        self.writes_dropped = 0
        self._flushed = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    def pending(self) -> dict[str, int]:
        """Counts not yet added to the fleet-wide totals (read-only)."""
        flushed = self._flushed
        return {k: v - flushed[k] for k, v in self.as_dict().items()}

    def flush(self, store: SharedStore) -> None:
        """Add the counts since the last flush to ``store``'s totals; on failure they are
        kept and sent next time. Safe from any thread: nothing is ever counted twice."""
        with self._lock:
            now = self.as_dict()
            deltas = {k: v - self._flushed[k] for k, v in now.items() if v != self._flushed[k]}
            if not deltas:
                return
            store.add_counters(deltas)
            self._flushed = now

    def fleet(self, store: SharedStore) -> dict[str, int]:
        """Totals of every process sharing ``store``, this one's unflushed counts included."""
        with self._lock:  # a flush in between would count its deltas twice or not at all
            totals: Mapping[str, int] = store.read_counters()
            pending = self.pending()
        return {name: totals.get(name, 0) + pending[name] for name in COUNTERS}

    def forked(self) -> None:
        """In a forked child: the parent's lock may be held by a thread that is gone."""
        self._lock = threading.Lock()
