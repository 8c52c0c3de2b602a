"""The fleet history: recorded once per interval by one process while URLs are read, nothing
while the fleet is idle, capped, kept across restarts and clears, read through
``get_cache_history()`` (and its awaitable twin); and the expiry histogram.

Runs on fakeredis and SQLite, or on the real servers with ``REDIS_URL`` / ``DATABASE_URL``.
Recording tests use ``history_interval=1`` so that intervals pass in seconds.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import CacheService, ConfigurationError, ObjectKey, Settings, SignedURLs
from sqla_signed_urls.history import encode_point
from sqla_signed_urls.testing import CountingRedis

from ..conftest import REDIS_URL, Base, File, add_files, wait_until
from ..helpers.entries import put_entry
from .test_service_async import World, run

RECORDING = {"history_interval": 1, "local_cache_size": 0}


class OtherBase(DeclarativeBase):
    pass


class OtherFile(OtherBase):
    """The conftest ``files`` table seen by a second process (a second ``SignedURLs``)."""

    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


def history(urls: SignedURLs) -> list[dict[str, Any]]:
    return CacheService(urls).get_cache_history()


def reader(
    urls: SignedURLs, db: sessionmaker[Session], model: type[Any] = File
) -> Callable[[], None]:
    """One page view: every row's URL read in one ``resolve()``."""

    def read() -> None:
        with db() as session:
            urls.resolve(list(session.scalars(select(model))))
        time.sleep(0.05)

    return read


def read_until(reads: list[Callable[[], None]], done: Callable[[], bool], what: str) -> None:
    """Keep every reader reading until ``done()``; the wait is bounded only against hangs."""

    def step() -> bool:
        for read in reads:
            read()
        return done()

    wait_until(step, what, limit=60)


@pytest.fixture
def files(db: sessionmaker[Session]) -> list[int]:
    return add_files(db, *(f"h/{i}.png" for i in range(12)))


@pytest.fixture
def recording(make_urls: Any) -> SignedURLs:
    urls: SignedURLs = make_urls(**RECORDING)
    urls.install(Base)
    return urls


# -- recording --------------------------------------------------------------------------------


def test_points_are_recorded_once_per_interval_while_urls_are_read(
    recording: SignedURLs, db: sessionmaker[Session], files: list[int]
) -> None:
    read_until([reader(recording, db)], lambda: len(history(recording)) >= 3, "three points")

    points = history(recording)
    times = [p["time"] for p in points]
    assert times == sorted(set(times)), "one point per interval, oldest first"
    assert all(isinstance(t, int) for t in times)
    for before, after in itertools.pairwise(points):
        for name in ("hits", "misses", "signed", "invalidations", "errors", "breaker_opened"):
            assert after[name] >= before[name]
    assert points[-1]["hits"] > points[0]["hits"]
    assert points[-1]["misses"] == len(files)  # the first page view signed every file
    assert all(p["keys"] == len(files) for p in points[1:])
    assert set(points[0]) == {
        "time",
        "hits",
        "misses",
        "signed",
        "errors",
        "sign_errors",
        "invalidations",
        "breaker_opened",
        "keys",
        "memory_used_bytes",
    }
    if REDIS_URL:
        assert all(p["memory_used_bytes"] > 0 for p in points)
    else:  # the in-process Redis does not report memory
        assert all(p["memory_used_bytes"] is None for p in points)


def test_an_idle_fleet_writes_nothing(
    recording: SignedURLs,
    db: sessionmaker[Session],
    files: list[int],
    redis_client: CountingRedis,
    key_prefix: str,
) -> None:
    read_until([reader(recording, db)], lambda: len(history(recording)) >= 1, "a point")
    time.sleep(1.5)  # the last reads' counts are flushed, the last point written
    before = history(recording)
    redis_client.reset()

    time.sleep(4)  # four intervals without a single URL read

    writes = {"SET", "ZADD", "HINCRBY", "PIPELINE", "UNLINK", "PUBLISH"}
    assert not writes & set(redis_client.commands), redis_client.commands
    assert history(recording) == before
    assert list(redis_client.scan_iter(match=key_prefix + "#lock:*")) == [], "locks end"


def test_history_keeps_the_newest_history_points(
    make_urls: Any, db: sessionmaker[Session], files: list[int]
) -> None:
    urls = make_urls(history_points=3, **RECORDING)
    urls.install(Base)
    first: list[int] = []

    def five_intervals_later() -> bool:
        points = history(urls)
        if points and not first:
            first.append(points[0]["time"])
        return bool(first) and points[-1]["time"] >= first[0] + 5

    read_until([reader(urls, db)], five_intervals_later, "five intervals of points")
    points = history(urls)
    assert len(points) == 3
    assert points[0]["time"] > first[0]


def test_two_processes_record_each_interval_once(
    recording: SignedURLs,
    make_urls: Any,
    db: sessionmaker[Session],
    files: list[int],
    key_prefix: str,
) -> None:
    other = make_urls(**RECORDING)
    other.install(OtherBase)
    reads = [reader(recording, db), reader(other, db, OtherFile)]

    read_until(reads, lambda: len(history(recording)) >= 4, "four points")

    raw = recording.store.read_history()
    times = [at for at, _ in raw]
    assert len(times) == len(set(times)), f"an interval was recorded twice: {times}"
    assert recording.channel.history is not None and other.channel.history is not None
    assert recording.channel.history.token != other.channel.history.token


def test_a_process_that_dies_is_replaced(
    recording: SignedURLs, make_urls: Any, db: sessionmaker[Session], files: list[int]
) -> None:
    read_until([reader(recording, db)], lambda: len(history(recording)) >= 2, "two points")
    recording.close()  # the process that recorded them is gone
    last = history(recording)[-1]["time"]
    # An interval whose election was won by a process that died before writing: its lock
    # ends by itself and costs that interval only.
    stale = (int(time.time()) // 1) + 1
    assert recording.store.try_lock(f"history:{stale}", "a-dead-process", 2)

    other = make_urls(**RECORDING)
    other.install(OtherBase)
    read_until(
        [reader(other, db, OtherFile)],
        lambda: len([p for p in history(other) if p["time"] > stale]) >= 2,
        "points from the process that is left",
    )
    times = [p["time"] for p in history(other)]
    assert stale not in times
    assert [t for t in times if t > last]


def test_a_restart_loses_no_history_and_clear_keeps_it(
    make_urls: Any, db: sessionmaker[Session], files: list[int]
) -> None:
    first = make_urls(**RECORDING)
    first.install(Base)
    read_until([reader(first, db)], lambda: len(history(first)) >= 2, "two points")
    first.uninstall()
    first.close()
    kept = history(first)

    restarted = make_urls(**RECORDING)
    restarted.install(Base)
    assert history(restarted) == kept
    service = CacheService(restarted)
    assert service.clear_file_url_cache() == len(files)
    assert history(restarted) == kept, "clearing the cache keeps its history"

    read_until([reader(restarted, db)], lambda: len(history(restarted)) > len(kept), "a new point")
    points = history(restarted)
    assert points[: len(kept)] == kept
    assert points[-1]["keys"] == len(files)  # the page was cached again after the clear


def test_history_points_0_records_none(
    make_urls: Any, db: sessionmaker[Session], files: list[int], redis_client: Any, key_prefix: str
) -> None:
    urls = make_urls(history_points=0, **RECORDING)
    urls.install(Base)
    assert urls.channel.history is None
    started = time.time()
    read_until(
        [reader(urls, db)],
        lambda: time.time() - started > 3 and urls.store.read_counters().get("hits", 0) > 0,
        "three intervals of flushed counters",
    )
    assert redis_client.zcard(key_prefix + "#history") == 0
    assert history(urls) == []


# -- reading it ---------------------------------------------------------------------------------


def put_points(urls: SignedURLs, *times: int, keep: int = 1440) -> None:
    for i, at in enumerate(times):
        values = {"hits": 10 * i, "misses": i, "keys": i, "memory_used_bytes": 1000 + i}
        urls.store.append_history(at, encode_point(at, values), keep)


def test_get_cache_history_since_and_limit(urls: SignedURLs) -> None:
    now = int(time.time()) // 60 * 60
    times = [now - 240, now - 180, now - 120, now - 60, now]
    put_points(urls, *times)
    service = CacheService(urls)

    assert [p["time"] for p in service.get_cache_history()] == times
    assert [p["time"] for p in service.get_cache_history(since=now - 120)] == times[2:]
    assert [p["time"] for p in service.get_cache_history(since=now - 120.5)] == times[2:]
    since = dt.datetime.fromtimestamp(now - 60, tz=dt.timezone.utc)
    assert [p["time"] for p in service.get_cache_history(since=since)] == times[3:]
    assert [p["time"] for p in service.get_cache_history(limit=2)] == times[3:]
    assert service.get_cache_history(since=now + 1) == []
    assert service.get_cache_history()[1] == {
        "time": times[1],
        "hits": 10,
        "misses": 1,
        "signed": 0,
        "errors": 0,
        "sign_errors": 0,
        "invalidations": 0,
        "breaker_opened": 0,
        "keys": 1,
        "memory_used_bytes": 1001,
    }
    with pytest.raises(TypeError, match="since='yesterday'"):
        service.get_cache_history(since="yesterday")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit=0"):
        service.get_cache_history(limit=0)


def test_malformed_points_are_left_out(
    urls: SignedURLs, redis_client: Any, key_prefix: str
) -> None:
    now = int(time.time())
    put_points(urls, now - 120, now - 60)
    redis_client.zadd(
        key_prefix + "#history",
        {
            "not json": now - 100,
            "[1, 2]": now - 90,
            json.dumps({"time": now - 30, "hits": -5, "keys": "many", "misses": True}): now - 30,
        },
    )
    points = CacheService(urls).get_cache_history()
    assert [p["time"] for p in points] == [now - 120, now - 60, now - 30]
    assert points[-1]["hits"] == points[-1]["keys"] == points[-1]["misses"] == 0


def test_the_async_twins_give_the_sync_results(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        now = int(time.time())
        put_points(w.urls, now - 120, now - 60)
        for i, left in enumerate((30, 400, 1000, 2600)):
            put_entry(w.urls, f"{w.prefix}{i}", f"k{i}", cache_left=left)
        service = w.service()
        assert await service.aget_cache_history() == service.get_cache_history()
        assert await service.aget_cache_history(since=now - 60) == service.get_cache_history(
            since=now - 60
        )
        assert await service.aget_expiry_histogram() == service.get_expiry_histogram()

    run(tmp_path, body)


# -- the expiry histogram -----------------------------------------------------------------------


def test_expiry_histogram_counts_entries_by_time_left_in_one_round_trip(
    urls: SignedURLs, redis_client: Any, key_prefix: str
) -> None:
    for i, left in enumerate((30, 290, 310, 599, 2000, 2699)):
        put_entry(urls, f"{key_prefix}{i}", f"k{i}", cache_left=left)
    put_entry(urls, f"{key_prefix}long", "k-long", cache_left=5000)  # a longer cache_ttl's
    counting = CountingRedis(redis_client._client, this_thread_only=True)
    service = CacheService(SignedURLs(urls.signer, redis=counting, key_prefix=key_prefix))

    buckets = service.get_expiry_histogram()

    assert counting.commands == {"PIPELINE": 1}
    assert [(b["from_seconds"], b["to_seconds"]) for b in buckets] == [
        *((low, low + 300) for low in range(0, 2700, 300)),
        (2700, None),
    ]
    assert [b["keys"] for b in buckets] == [2, 2, 0, 0, 0, 0, 1, 0, 1, 1]
    assert sum(b["keys"] for b in buckets) == service.get_cache_stats()["keys"] == 7


@pytest.mark.parametrize(
    ("cache_ttl", "edges"),
    [
        (2700, list(range(0, 2701, 300))),
        (60, list(range(0, 61, 5))),
        (600, list(range(0, 601, 60))),
        (86_399, list(range(0, 86_400 + 1, 7200))),
    ],
)
def test_histogram_buckets_are_round_and_at_most_thirteen(
    make_urls: Any, cache_ttl: int, edges: list[int]
) -> None:
    urls = make_urls(cache_ttl=cache_ttl, url_ttl=cache_ttl * 2)
    buckets = CacheService(urls).get_expiry_histogram()
    assert [b["from_seconds"] for b in buckets] == edges
    assert len(buckets) <= 13


# -- settings -----------------------------------------------------------------------------------


def test_history_settings_are_validated_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (Settings().history_points, Settings().history_interval) == (1440, 60)
    for bad in ({"history_points": -1}, {"history_points": 100_001}, {"history_points": 1.5}):
        with pytest.raises(ConfigurationError, match="history_points"):
            Settings(**bad)
    for bad in ({"history_interval": 0}, {"history_interval": "60"}):
        with pytest.raises(ConfigurationError, match="history_interval"):
            Settings(**bad)
    monkeypatch.setenv("FILE_URL_HISTORY_POINTS", "60")
    monkeypatch.setenv("FILE_URL_HISTORY_INTERVAL", "30")
    settings, _ = Settings.from_env()
    assert (settings.history_points, settings.history_interval) == (60, 30)
    monkeypatch.setenv("FILE_URL_HISTORY_POINTS", "a day")
    with pytest.raises(ConfigurationError, match="FILE_URL_HISTORY_POINTS='a day'"):
        Settings.from_env()
