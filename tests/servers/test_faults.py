"""Faults: Redis down at start, killed mid-traffic, silent; the breaker, recovery, retried
invalidations, and clients passed in as they are.

Every test here runs against real ``redis-server`` processes (or a silent socket) on private
loopback ports, from the fixtures in ``conftest.py``; the tests kill and restart them.
Assertions are on behaviour and counts (round trips made, errors and breaker openings counted,
log lines), never on wall time. The breaker's clock is frozen (``sqla_signed_urls.core._time``)
where a test needs to tell "skipped while open" from "probed again", so a slow machine cannot
change the outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import SignedURLs, signals
from sqla_signed_urls import core as core_module
from sqla_signed_urls.cache import guard as guard_module
from sqla_signed_urls.cache.redis import client_from_url
from sqla_signed_urls.testing import CountingRedis, FakeSigner
from sqla_signed_urls.types import ObjectKey

from ..conftest import wait_until
from ._processes import RedisServer, SilentServer, free_port

OUTAGE = "Redis unavailable"


class FaultBase(DeclarativeBase):
    pass


class FaultFile(FaultBase):
    __tablename__ = "fault_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


def key_of(url: str | None) -> str:
    """The object key a FakeSigner URL points at."""
    assert url is not None
    parts = urlsplit(url)
    assert parts.netloc == "files.test"
    assert parts.query.endswith("&sig=fake")
    return unquote(parts.path[1:])


class Clock:
    """Replaces the breaker's clock: time moves only when the test says so."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = time.time()
        monkeypatch.setattr(core_module, "_time", self)  # the read path
        monkeypatch.setattr(guard_module, "_time", self)  # the circuit breaker

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'faults.db'}")
    FaultBase.metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        session.add_all(FaultFile(id=i, object_key=f"files/{i}.png") for i in range(1, 21))
        session.commit()
    yield factory
    engine.dispose()


@pytest.fixture
def made() -> Iterator[Callable[..., SignedURLs]]:
    """Build installed SignedURLs; uninstall, close them and their clients afterwards."""
    built: list[tuple[SignedURLs, Any]] = []

    def make(redis_arg: Any, **kwargs: Any) -> SignedURLs:
        kwargs.setdefault("signer", FakeSigner())
        kwargs.setdefault("retry_after", 0.2)
        urls = SignedURLs(redis=redis_arg, **kwargs)
        urls.install(FaultBase)
        built.append((urls, redis_arg))
        return urls

    yield make
    for urls, _ in built:
        urls.uninstall()
        urls.close()
    for urls, _ in built:
        raw = getattr(urls.redis, "_client", None) or urls.redis
        raw.close()


def counting_client(url: str) -> CountingRedis:
    """The client SignedURLs would build from ``url``, counting its round trips."""
    return CountingRedis(client_from_url(url, socket_timeout=0.25))


def reads(client: CountingRedis) -> int:
    """Read round trips made (the background thread's counter flushes are not reads)."""
    return sum(client.commands[name] for name in ("GET", "MGET", "MGET_NONATOMIC"))


def read_all(db: sessionmaker[Session], urls: SignedURLs) -> list[str | None]:
    """One page: every file's ``url`` attribute, then the same page through ``resolve()``.

    Read again when an expiry window ended between the two reads: URLs signed directly on both
    sides of a window boundary rightly differ (their expiries are rounded to the window)."""
    for _ in range(3):
        window = urls.expires_at()
        with db() as session:
            files = session.query(FaultFile).order_by(FaultFile.id).all()
            singles = [f.url for f in files]
            batch = urls.resolve(files)
        if urls.expires_at() == window:
            break
    assert singles == batch
    for f, url in zip(files, singles, strict=True):
        assert key_of(url) == f.object_key
    return singles


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "sqla_signed_urls" and r.levelno >= logging.WARNING and OUTAGE in r.message
    ]


def warnings_and_up(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- down at start -----------------------------------------------------------------------------


def test_redis_down_at_start_serves_signed_urls_and_recovers(
    db: sessionmaker[Session],
    made: Callable[..., SignedURLs],
    caplog: pytest.LogCaptureFixture,
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    caplog.set_level(logging.INFO, logger="sqla_signed_urls")
    port = free_port()
    urls = made(f"redis://127.0.0.1:{port}/0")  # nothing listens there yet
    read_all(db, urls)
    read_all(db, urls)
    assert urls.stats.breaker_opened == 1
    assert urls.stats.errors >= 1
    assert not urls.redis_available
    assert len(outage_warnings(caplog)) == 1

    redis_server_factory("late", port=port)  # now something listens there
    with redis.Redis(port=port, socket_timeout=5) as check:

        def cached() -> bool:
            read_all(db, urls)
            return check.exists("file_url:1") == 1

        wait_until(cached, "caching to resume once Redis listens")
    assert urls.redis_available
    assert len(outage_warnings(caplog)) == 1


# -- killed mid-traffic ------------------------------------------------------------------------


@pytest.mark.parametrize("local_cache_size", [0, 10_000], ids=["no-L1", "L1"])
def test_killed_mid_traffic_never_raises_and_recovers(
    db: sessionmaker[Session],
    redis_server: RedisServer,
    made: Callable[..., SignedURLs],
    caplog: pytest.LogCaptureFixture,
    local_cache_size: int,
) -> None:
    caplog.set_level(logging.INFO, logger="sqla_signed_urls")
    urls = made(redis_server.url(), local_cache_size=local_cache_size)
    read_all(db, urls)
    assert urls.stats.errors == 0

    redis_server.kill()
    for _ in range(30):
        read_all(db, urls)  # every URL for its row's object key, nothing raised

    def noticed() -> bool:
        read_all(db, urls)
        return urls.stats.breaker_opened == 1

    # With the in-process layer on, pages may be served from it until the listener notices.
    wait_until(noticed, "the breaker to open after the server was killed")
    assert urls.stats.errors >= 1
    assert len(outage_warnings(caplog)) == 1

    redis_server.start()  # same port, empty

    def recovered() -> bool:
        read_all(db, urls)
        with redis.Redis(port=redis_server.port, socket_timeout=5) as check:
            return check.exists("file_url:1") == 1

    wait_until(recovered, "caching to resume after the restart")
    assert urls.redis_available
    assert urls.stats.breaker_opened == 1
    assert len(outage_warnings(caplog)) == 1
    # At most one more line: the recovery notice. Never one per request.
    assert len(warnings_and_up(caplog)) <= 2


def test_breaker_skips_redis_until_retry_after_then_probes_once(
    db: sessionmaker[Session],
    redis_server: RedisServer,
    made: Callable[..., SignedURLs],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = counting_client(redis_server.url())
    urls = made(client, local_cache_size=0, retry_after=5.0)
    clock = Clock(monkeypatch)
    errors: list[BaseException] = []

    def on_error(sender: Any, error: BaseException) -> None:
        if sender is urls:  # only this test's SignedURLs
            errors.append(error)

    signals.cache_error.connect(on_error)
    try:
        read_all(db, urls)
        redis_server.kill()
        client.reset()
        with db() as session:
            session.get(FaultFile, 1).url  # noqa: B018 - the first failure
        assert reads(client) == 1
        assert urls.stats.errors == 1
        assert urls.stats.breaker_opened == 1
        assert len(errors) == 1
        assert isinstance(errors[0], redis.ConnectionError)

        for _ in range(50):  # breaker open: zero attempts, whatever the traffic
            read_all(db, urls)
        assert reads(client) == 1
        assert urls.stats.errors == 1

        clock.advance(5.1)  # retry_after has passed: exactly one probe, which fails
        read_all(db, urls)
        assert reads(client) == 2
        assert urls.stats.errors == 2
        assert urls.stats.breaker_opened == 1  # still the same outage
        read_all(db, urls)
        assert reads(client) == 2  # open again after the failed probe
    finally:
        signals.cache_error.disconnect(on_error)
    assert len(outage_warnings(caplog)) == 1


# -- silent server -----------------------------------------------------------------------------


def test_silent_server_costs_one_timeout_then_the_breaker_skips_it(
    db: sessionmaker[Session],
    made: Callable[..., SignedURLs],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    silent_server: SilentServer,
) -> None:
    errors: list[BaseException] = []

    def on_error(sender: Any, error: BaseException) -> None:
        if sender is urls:  # only this test's SignedURLs
            errors.append(error)

    client = counting_client(silent_server.url())
    urls = made(client, local_cache_size=0, retry_after=5.0)
    clock = Clock(monkeypatch)
    signals.cache_error.connect(on_error)
    try:
        with db() as session:
            file = session.get(FaultFile, 3)
            assert key_of(file.url) == "files/3.png"
        # One command, failed by the socket timeout (not retried), then the breaker.
        assert reads(client) == 1
        assert [type(e) for e in errors] == [redis.TimeoutError]
        assert silent_server.received > 0
        for _ in range(20):
            read_all(db, urls)
        assert reads(client) == 1
        assert urls.stats.errors == 1
        assert urls.stats.breaker_opened == 1

        clock.advance(5.1)
        read_all(db, urls)  # one probe, one more timeout
        assert reads(client) == 2
        assert len(errors) == 2
    finally:
        signals.cache_error.disconnect(on_error)
        urls.close()
    assert len(outage_warnings(caplog)) == 1


def test_silent_server_from_a_url_never_raises(
    db: sessionmaker[Session], made: Callable[..., SignedURLs], silent_server: SilentServer
) -> None:
    urls = made(silent_server.url())
    for _ in range(3):
        read_all(db, urls)
    assert urls.stats.errors >= 1
    assert urls.stats.breaker_opened == 1
    urls.close()


# -- one line per outage, counters -------------------------------------------------------------


def test_one_warning_per_outage_and_counters_per_outage(
    db: sessionmaker[Session],
    redis_server: RedisServer,
    made: Callable[..., SignedURLs],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sqla_signed_urls")
    urls = made(redis_server.url(), local_cache_size=0)
    for outage in (1, 2):
        read_all(db, urls)
        redis_server.kill()
        for _ in range(100):
            read_all(db, urls)
        assert urls.stats.breaker_opened == outage
        redis_server.start()

        def cached_again() -> bool:
            read_all(db, urls)
            return urls.redis_available

        wait_until(cached_again, f"recovery from outage {outage}")
        assert len(outage_warnings(caplog)) == outage
    assert urls.stats.errors >= 2
    # Two outages of 100+ page loads each: a handful of lines at WARNING, not hundreds.
    assert len(warnings_and_up(caplog)) <= 4
    assert urls.stats.as_dict()["breaker_opened"] == 2


# -- invalidations that could not reach Redis --------------------------------------------------


def test_invalidation_while_down_is_retried_when_redis_is_back(
    db: sessionmaker[Session], redis_durable_server: RedisServer, made: Callable[..., SignedURLs]
) -> None:
    urls = made(redis_durable_server.url(), local_cache_size=0)
    read_all(db, urls)
    with redis.Redis(port=redis_durable_server.port, socket_timeout=5) as check:
        assert check.exists("file_url:5") == 1
    redis_durable_server.kill()

    with db() as session:
        session.get(FaultFile, 5).object_key = "files/5-new.png"
        session.commit()  # after_commit cannot reach Redis; must not raise
    assert key_of(read_all(db, urls)[4]) == "files/5-new.png"

    redis_durable_server.start()
    with redis.Redis(port=redis_durable_server.port, socket_timeout=5) as check:
        # The stale value survived the restart (AOF) until the retried invalidation drops it.
        wait_until(lambda: check.exists("file_url:5") == 0, "the retried invalidation")
        assert check.exists("file_url:4") == 1  # and nothing else was dropped
    assert key_of(read_all(db, urls)[4]) == "files/5-new.png"


def test_stale_value_left_by_a_lost_invalidation_is_never_served(
    db: sessionmaker[Session], redis_durable_server: RedisServer, made: Callable[..., SignedURLs]
) -> None:
    writer = made(redis_durable_server.url(), local_cache_size=0, retry_after=60.0)
    read_all(db, writer)
    redis_durable_server.kill()
    with db() as session:
        session.get(FaultFile, 6).object_key = "files/6-new.png"
        session.commit()
    redis_durable_server.start()
    with redis.Redis(port=redis_durable_server.port, socket_timeout=5) as check:
        stale = check.get("file_url:6")
    assert stale is not None and b"files/6.png" in stale  # the writer has not retried yet

    # Another process, Redis up, the stale value in front of it: it signs the new key.
    reader = made(redis_durable_server.url(), local_cache_size=10_000)
    for _ in range(3):
        assert key_of(read_all(db, reader)[5]) == "files/6-new.png"
    writer.close()


# -- a client passed in is used as is ----------------------------------------------------------


def test_a_passed_client_is_used_as_is(
    db: sessionmaker[Session], redis_server: RedisServer, made: Callable[..., SignedURLs]
) -> None:
    client = redis.Redis(port=redis_server.port, socket_timeout=3.0, health_check_interval=7)
    urls = made(client)
    assert urls.redis is client
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 3.0
    assert kwargs["health_check_interval"] == 7
    read_all(db, urls)
    assert client.exists("file_url:1") == 1


def test_a_passed_client_that_decodes_responses_works(
    db: sessionmaker[Session], redis_server: RedisServer, made: Callable[..., SignedURLs]
) -> None:
    client = redis.Redis(port=redis_server.port, socket_timeout=3.0, decode_responses=True)
    urls = made(client)
    first = read_all(db, urls)
    assert read_all(db, urls) == first
    assert urls.stats.hits >= len(first)
    assert urls.stats.errors == 0
