"""The fleet history: one snapshot of the fleet's counters, live keys and memory per interval,
kept in the shared store, and the per-minute figures read from it.

Recording rides on the invalidation listener's once-a-second tick (the counter flush), never on
the read path. Each interval one process of the fleet is elected with a lock that ends by
itself (``<prefix>#lock:history:<time>``, ``SET NX EX``), so a process that dies is simply not
elected again; the elected one reads the fleet counters, the live key count and the memory used
and appends them to ``<prefix>#history``, keeping the newest ``history_points``. Only processes
that counted something since their last turn stand for election, so an idle fleet writes
nothing::

    recorder = HistoryRecorder(urls.stats, points=1440, interval=60)
    recorder.tick(urls.store)        # from the listener thread, every second

A point is a dict: ``time`` (Unix seconds, the start of its interval), the running totals of
the fleet counters (``hits``, ``misses``, ``signed``, ``errors``, ``sign_errors``,
``invalidations``, ``breaker_opened``, as in ``get_cache_stats()``), ``keys`` and
``memory_used_bytes`` (``None`` when the store cannot tell). :func:`per_minute` turns
consecutive points into rates.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .counters import COUNTERS

if TYPE_CHECKING:
    from .cache.base import SharedStore
    from .counters import Stats

__all__ = [
    "POINT_FIELDS",
    "HistoryRecorder",
    "decode_points",
    "encode_point",
    "histogram_edges",
    "increase",
    "per_minute",
    "window_summary",
]

#: What a point holds besides its ``time``.
POINT_FIELDS = (*COUNTERS, "keys", "memory_used_bytes")

Point = dict[str, Any]


class HistoryRecorder:
    """Appends a fleet snapshot to the store's history once per ``interval`` seconds, from one
    process of the fleet at a time; :meth:`tick` is called every second by the invalidation
    listener, right after the counter flush.

    A process stands for election in an interval only when its own counters moved since its
    last turn (someone read URLs here), and at most once per interval, so it costs nothing
    between intervals and nothing at all while the fleet is idle.
    """

    def __init__(self, stats: Stats, *, points: int, interval: int) -> None:
        self.stats = stats
        self.points = points
        self.interval = interval
        self.token = _token()
        self._seen = _counted(stats)
        self._active = False
        # A process first stands at the next interval's start, so each point is taken at
        # an interval's start, by a process that served URLs during the interval before.
        self._slot = self._slot_of(time.time())

    def tick(self, store: SharedStore, now: float | None = None) -> bool:
        """Record this interval's point if it is this process's turn; ``True`` when it did."""
        counted = _counted(self.stats)
        if counted != self._seen:
            self._seen = counted
            self._active = True
        if not self._active or not store.keeps_history:
            return False
        now = time.time() if now is None else now
        slot = self._slot_of(now)
        if slot <= self._slot:
            return False
        self._slot = slot
        self._active = False
        if not store.try_lock(f"history:{slot}", self.token, 2 * self.interval):
            return False  # another process records this interval
        point: Point = dict(store.read_counters())
        point["keys"] = store.live_count(int(now))
        point["memory_used_bytes"] = store.memory_used()
        store.append_history(slot, encode_point(slot, point), self.points)
        return True

    def _slot_of(self, now: float) -> int:
        return int(now // self.interval) * self.interval

    def forked(self) -> None:
        """In a forked child: a process of its own, with a token of its own."""
        self.token = _token()
        self._slot = self._slot_of(time.time())


def _token() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _counted(stats: Stats) -> int:
    return sum(stats.as_dict().values())


# -- points -----------------------------------------------------------------------------------


def encode_point(at: int, values: dict[str, Any]) -> str:
    """A point as stored: compact JSON that names its time, so two points never collide."""
    point: Point = {"time": at}
    for name in POINT_FIELDS:
        point[name] = values.get(name, None if name == "memory_used_bytes" else 0)
    return json.dumps(point, separators=(",", ":"))


def decode_points(raw: Iterable[tuple[int, str | bytes]]) -> list[Point]:
    """Points from the store's ``(at, text)`` pairs, oldest first; anything malformed is left
    out, and of two points for one time (two processes elected with clocks apart) the one
    that counted more is kept."""
    by_time: dict[int, Point] = {}
    for at, text in raw:
        point = _decode(at, text)
        if point is None:
            continue
        held = by_time.get(at)
        if held is None or _lookups(point) >= _lookups(held):
            by_time[at] = point
    return [by_time[at] for at in sorted(by_time)]


def _decode(at: int, text: str | bytes) -> Point | None:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeError):
        return None
    if not isinstance(data, dict):
        return None
    point: Point = {"time": int(at)}
    for name in POINT_FIELDS:
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            point[name] = value
        else:
            point[name] = None if name == "memory_used_bytes" else 0
    return point


def _lookups(point: Point) -> int:
    return int(point["hits"]) + int(point["misses"])


# -- figures read from points -----------------------------------------------------------------


def increase(before: int, after: int) -> int:
    """How much a running total grew; a total that went down was reset, and grew by what it
    holds now (as Prometheus counts a counter reset)."""
    return after - before if after >= before else after


def per_minute(points: Sequence[Point]) -> list[Point]:
    """For each point after the first: what the fleet counted in the interval it ends, per
    minute (``hits``, ``misses``, ``signed``, ...), ``hit_ratio`` of that interval (``None``
    without lookups), ``minutes`` (its length) and the point's ``keys`` and
    ``memory_used_bytes``."""
    rates: list[Point] = []
    for before, after in itertools.pairwise(points):
        minutes = (after["time"] - before["time"]) / 60
        if minutes <= 0:
            continue
        rate: Point = {"time": after["time"], "minutes": minutes}
        for name in COUNTERS:
            rate[name] = increase(before[name], after[name]) / minutes
        lookups = rate["hits"] + rate["misses"]
        rate["hit_ratio"] = rate["hits"] / lookups if lookups else None
        rate["keys"] = after["keys"]
        rate["memory_used_bytes"] = after["memory_used_bytes"]
        rates.append(rate)
    return rates


def window_summary(points: Sequence[Point], now: Point) -> Point:
    """What the fleet counted since the first of ``points`` (or since the counters began
    without any), up to ``now`` (current totals with ``hits``, ``misses``, ...): the counts,
    ``hit_ratio`` and ``signer_avoided`` (1 - signings / URLs served), ``None`` without
    lookups, and ``since`` (the first point's time, or ``None``)."""
    start = points[0] if points else None
    summary: Point = {"since": start["time"] if start else None}
    for name in COUNTERS:
        summary[name] = increase(start[name], now[name]) if start else int(now[name])
    lookups = summary["hits"] + summary["misses"]
    summary["lookups"] = lookups
    summary["hit_ratio"] = summary["hits"] / lookups if lookups else None
    summary["signer_avoided"] = max(0.0, 1 - summary["signed"] / lookups) if lookups else None
    return summary


_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400)


def histogram_edges(cache_ttl: int) -> list[int]:
    """Lower edges, in seconds left, of the buckets of cached entries by time left: equal steps
    of a round size up to ``cache_ttl``, then one open bucket for anything longer."""
    for step in _STEPS:
        if cache_ttl / step <= 12:
            break
    else:
        step = math.ceil(cache_ttl / 12)
    buckets = math.ceil(cache_ttl / step)
    return [i * step for i in range(buckets + 1)]
