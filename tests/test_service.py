"""Issue 4: CacheService clear / warm / stats / refresh, through the public API and Redis."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import DateTime, Engine, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import (
    CacheError,
    CacheService,
    ConfigurationError,
    ObjectKey,
    SignedURLs,
    SigningError,
    signals,
)
from sqla_signed_urls.cache.base import encode_entry, signer_tag
from sqla_signed_urls.service import RedisOnlySigner
from sqla_signed_urls.testing import FakeSigner

from .conftest import REDIS_URL, File, add_files, cache_files, wait_until


def raw_key(redis_client: Any, key: str) -> bytes | None:
    value: bytes | None = redis_client.get(key)
    return value


class Signals:
    """Records the operation signals."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []
        self._handlers: list[tuple[Any, Any]] = []
        for sig in (
            signals.cache_cleared,
            signals.cache_warmed,
            signals.urls_refreshed,
            signals.url_signed,
        ):
            handler = self._handler(sig.name)
            sig.connect(handler, weak=False)
            self._handlers.append((sig, handler))

    def _handler(self, name: str) -> Any:
        def receive(sender: Any, **kwargs: Any) -> None:
            self.sent.append((name, sender, kwargs))

        return receive

    def of(self, name: str) -> list[tuple[Any, dict[str, Any]]]:
        return [(sender, kwargs) for n, sender, kwargs in self.sent if n == name]

    def close(self) -> None:
        for sig, handler in self._handlers:
            sig.disconnect(handler)


@pytest.fixture
def sent() -> Iterator[Signals]:
    recorder = Signals()
    yield recorder
    recorder.close()


@pytest.fixture
def service(urls: SignedURLs, db: sessionmaker[Session]) -> CacheService:
    return CacheService(urls, session_factory=db, model=File)


@pytest.fixture
def foreign_key(key_prefix: str, redis_client: Any) -> Iterator[str]:
    """A key outside the URL prefix (someone else's data in the same Redis db)."""
    key = key_prefix.replace("file_url:", "") + "session:abc"
    redis_client.set(key, b"keep me")
    yield key
    redis_client.delete(key)


# -- clear ---------------------------------------------------------------------------------


def test_clear_one_file_removes_only_its_key_and_sends_signal(
    service: CacheService,
    urls: SignedURLs,
    db: Any,
    redis_client: Any,
    key_prefix: str,
    sent: Signals,
) -> None:
    ids = add_files(db, "a.png", "b.png", "c.png")
    cache_files(urls, db, ids)
    keys = [f"{key_prefix}{i}" for i in ids]
    assert all(redis_client.exists(k) for k in keys)

    assert service.clear_file_url_cache(file_id=ids[1]) == 1

    assert redis_client.exists(keys[0]) and redis_client.exists(keys[2])
    assert not redis_client.exists(keys[1])
    assert redis_client.zscore(f"{key_prefix}#expiry", keys[1]) is None
    assert sent.of("cache-cleared") == [(service, {"count": 1, "file_id": ids[1]})]
    assert service.clear_file_url_cache(file_id=ids[1]) == 0


def test_clear_all_uses_scan_and_unlink_and_spares_other_data(
    service: CacheService,
    urls: SignedURLs,
    db: Any,
    redis_client: Any,
    key_prefix: str,
    foreign_key: str,
    sent: Signals,
) -> None:
    ids = add_files(db, *(f"f/{i}.png" for i in range(25)))
    cache_files(urls, db, ids)
    urls.flush_stats()  # creates the bookkeeping hash <prefix>#stats
    redis_client.reset()

    assert service.clear_file_url_cache() == 25

    left = [k.decode() for k in redis_client.scan_iter(match=key_prefix + "*")]
    assert left == [f"{key_prefix}#stats"]  # counters survive; no URL key, no index
    assert redis_client.get(foreign_key) == b"keep me"
    used = set(redis_client.commands)
    assert "KEYS" not in used and "FLUSHDB" not in used and "FLUSHALL" not in used
    assert sent.of("cache-cleared") == [(service, {"count": 25, "file_id": None})]


def test_clear_tells_every_process_to_drop_its_local_layer(
    service: CacheService, urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str
) -> None:
    ids = add_files(db, "a.png")
    cache_files(urls, db, ids)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{key_prefix}#invalidate")
    try:
        pubsub.get_message(timeout=1.0)
        service.clear_file_url_cache(file_id=ids[0])
        service.clear_file_url_cache()
        messages: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(messages) < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                messages.append(message["data"])
    finally:
        pubsub.close()
    assert messages == [f"{key_prefix}{ids[0]}".encode(), b"*"]


def test_clear_drops_this_processes_local_copy(
    make_urls: Any, db: Any, signer: FakeSigner, redis_client: Any
) -> None:
    from .conftest import Base

    urls = make_urls(local_cache_size=100)
    urls.install(Base)
    service = CacheService(urls, session_factory=db, model=File)
    (fid,) = add_files(db, "a.png")
    with db() as session:
        file = session.get(File, fid)
        first = file.url
        # The local layer is used once this process listens for invalidations.
        wait_until(lambda: urls.redis_available and _served_locally(urls, file, redis_client), "L1")
        calls = len(signer.calls)
        service.clear_file_url_cache(file_id=fid)
        assert file.url is not None
        assert len(signer.calls) == calls + 1  # not served from the local layer any more
        assert first is not None


def _served_locally(urls: SignedURLs, file: Any, redis_client: Any) -> bool:
    redis_client.reset()
    assert file.url is not None
    return redis_client.commands["GET"] == 0


@pytest.mark.parametrize(
    ("file_id", "error"), [(True, TypeError), (-1, ValueError), (1.5, TypeError), ("", ValueError)]
)
def test_clear_rejects_bad_file_ids_and_removes_nothing(
    service: CacheService, urls: SignedURLs, db: Any, redis_client: Any, file_id: Any, error: type
) -> None:
    ids = add_files(db, "a.png")
    cache_files(urls, db, ids)
    with pytest.raises(error, match="file_id"):
        service.clear_file_url_cache(file_id)
    assert service.count_keys() == 1


# -- warm ----------------------------------------------------------------------------------


class WarmBase(DeclarativeBase):
    pass


class Upload(WarmBase):
    __tablename__ = "uploads"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    file_type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


@pytest.fixture
def uploads(engine: Engine, make_urls: Any) -> Iterator[tuple[SignedURLs, sessionmaker[Session]]]:
    WarmBase.metadata.create_all(engine)
    urls = make_urls(local_cache_size=0)
    urls.install(WarmBase)
    yield urls, sessionmaker(engine, expire_on_commit=False)
    WarmBase.metadata.drop_all(engine)


T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def add_uploads(db: sessionmaker[Session], rows: list[tuple[int, str | None, str, int]]) -> None:
    """rows: (id, object_key, file_type, minutes after T0)."""
    with db() as session:
        session.add_all(
            Upload(id=i, object_key=k, file_type=t, created_at=T0 + dt.timedelta(minutes=m))
            for i, k, t, m in rows
        )
        session.commit()


def cached_ids(redis_client: Any, key_prefix: str) -> set[int]:
    return {
        int(k.decode()[len(key_prefix) :])
        for k in redis_client.scan_iter(match=key_prefix + "*")
        if "#" not in k.decode()
    }


def test_warm_takes_newest_by_created_at(
    uploads: tuple[SignedURLs, Any], redis_client: Any, key_prefix: str, signer: FakeSigner
) -> None:
    urls, db = uploads
    # ids deliberately not in creation order
    add_uploads(
        db, [(1, "a", "img", 50), (2, "b", "img", 10), (3, "c", "img", 40), (4, "d", "img", 20)]
    )
    service = CacheService(urls, session_factory=db, model=Upload)

    assert service.warm_file_url_cache(limit=2) == 2

    assert cached_ids(redis_client, key_prefix) == {1, 3}
    assert sorted(key for key, _ in signer.calls) == ["a", "c"]


def test_warm_filters_by_file_type_and_since_and_skips_empty_keys(
    uploads: tuple[SignedURLs, Any], redis_client: Any, key_prefix: str
) -> None:
    urls, db = uploads
    add_uploads(
        db,
        [
            (1, "a", "avatar", 1),
            (2, "b", "post", 2),
            (3, None, "avatar", 3),
            (4, "", "avatar", 4),
            (5, "e", "avatar", 5),
            (6, "f", "avatar", 6),
        ],
    )
    service = CacheService(urls, session_factory=db, model=Upload)

    assert service.warm_file_url_cache("avatar", since=T0 + dt.timedelta(minutes=5)) == 2
    assert cached_ids(redis_client, key_prefix) == {5, 6}
    assert service.warm_file_url_cache("avatar") == 3
    assert cached_ids(redis_client, key_prefix) == {1, 5, 6}


def test_warm_orders_by_primary_key_without_created_at_and_is_idempotent(
    service: CacheService,
    urls: SignedURLs,
    db: Any,
    signer: FakeSigner,
    redis_client: Any,
    key_prefix: str,
    sent: Signals,
) -> None:
    ids = add_files(db, *(f"k{i}" for i in range(10)))
    hits, misses = urls.stats.hits, urls.stats.misses

    assert service.warm_file_url_cache(limit=3) == 3
    assert cached_ids(redis_client, key_prefix) == set(ids[-3:])
    assert len(signer.calls) == 3
    # a second run finds them cached: counted as warm, nothing signed again
    assert service.warm_file_url_cache(limit=3) == 3
    assert len(signer.calls) == 3
    # warming is not traffic: the hit ratio is left alone; the signings are counted
    assert (urls.stats.hits, urls.stats.misses) == (hits, misses)
    assert urls.stats.signed == 3
    assert [kw for _, kw in sent.of("cache-warmed")] == [
        {"count": 3, "file_type": None},
        {"count": 3, "file_type": None},
    ]
    (sender, kwargs) = sent.of("url-signed")[0]
    assert sender is File and sorted(kwargs["keys"]) == sorted(f"{key_prefix}{i}" for i in ids[-3:])
    # warmed entries are what readers get, without signing
    with db() as session:
        assert session.get(File, ids[-1]).url is not None
    assert len(signer.calls) == 3


def test_warm_streams_in_batches_one_mget_and_one_pipeline_each(
    urls: SignedURLs, db: Any, redis_client: Any
) -> None:
    add_files(db, *(f"k{i}" for i in range(10)))
    service = CacheService(urls, session_factory=db, model=File, batch_size=4)
    seen: list[int] = []
    redis_client.reset()

    assert service.warm_file_url_cache(limit=None, progress=seen.append) == 10

    assert seen == [4, 4, 2]
    assert redis_client.commands["MGET"] == 3
    assert redis_client.commands["PIPELINE"] == 3


def test_warm_served_urls_keep_min_validity(
    service: CacheService, urls: SignedURLs, db: Any
) -> None:
    from sqla_signed_urls.cache.base import decode_entry

    (fid,) = add_files(db, "x.png")
    service.warm_file_url_cache()
    value = decode_entry(raw_key(urls.redis, urls.cache_key(_file(db, fid)) or ""))
    assert value is not None
    assert value.tag == signer_tag(urls.signer.name) and value.object_key == "x.png"
    assert value.expires_at - value.cache_until >= urls.settings.min_validity
    assert value.cache_until > time.time()


def _file(db: Any, fid: int) -> File:
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        return file


def test_warm_needs_a_database_and_a_model(urls: SignedURLs, make_urls: Any, db: Any) -> None:
    with pytest.raises(ConfigurationError, match="session_factory"):
        CacheService(urls, model=File).warm_file_url_cache()
    bare = make_urls()  # installed on nothing: no model to infer
    with pytest.raises(ConfigurationError, match="model="):
        CacheService(bare, session_factory=db).warm_file_url_cache()
    # one installed model is found by itself
    assert CacheService(urls, session_factory=db).warm_file_url_cache() == 0


def test_warm_rejects_bad_arguments(service: CacheService) -> None:
    with pytest.raises(ValueError, match="limit=0"):
        service.warm_file_url_cache(limit=0)
    with pytest.raises(ValueError, match="file_type"):
        service.warm_file_url_cache("")
    with pytest.raises(ConfigurationError, match="created_at"):
        service.warm_file_url_cache(since=T0)


def test_service_rejects_bad_construction(urls: SignedURLs) -> None:
    with pytest.raises(ConfigurationError, match="SignedURLs"):
        CacheService("redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="model="):
        CacheService(urls, model=str)
    with pytest.raises(ConfigurationError, match="batch_size"):
        CacheService(urls, batch_size=0)


# -- stats ---------------------------------------------------------------------------------


def test_stats_report_counters_keys_and_db(
    service: CacheService, urls: SignedURLs, db: Any, redis_client: Any
) -> None:
    ids = add_files(db, "a", "b", "c")
    cache_files(urls, db, ids)  # 3 misses, 3 signed
    cache_files(urls, db, ids[:2])  # 2 hits
    urls.flush_stats()  # bookkeeping keys exist now too

    stats = service.get_cache_stats()

    assert stats["hits"] == 2 and stats["misses"] == 3 and stats["signed"] == 3
    assert stats["hit_ratio"] == pytest.approx(0.4)
    assert stats["errors"] == 0 and stats["invalidations"] == 0
    assert stats["keys"] == 3  # <prefix>#stats and <prefix>#expiry are not counted
    assert service.count_keys() == 3
    if REDIS_URL:
        assert isinstance(stats["memory_used_bytes"], int) and stats["memory_used_bytes"] > 0
        assert stats["redis_db"] == int(urlsplit(REDIS_URL).path.strip("/") or 0)
    else:
        assert stats["memory_used_bytes"] is None  # the embedded Redis has no INFO
        assert stats["redis_db"] == 0


def test_stats_include_this_processes_unflushed_counts(
    service: CacheService, urls: SignedURLs, db: Any
) -> None:
    ids = add_files(db, "a")
    cache_files(urls, db, ids)
    cache_files(urls, db, ids)
    # no flush: the counts come from this process
    stats = service.get_cache_stats()
    assert (stats["hits"], stats["misses"], stats["signed"]) == (1, 1, 1)


def test_stats_are_fleet_wide_per_prefix(
    make_urls: Any, db: Any, key_prefix: str, redis_client: Any
) -> None:
    from .conftest import Base

    here = make_urls(local_cache_size=0)
    here.install(Base)
    there = make_urls(local_cache_size=0)  # another process: same Redis, same prefix
    there.install(Base)
    elsewhere = make_urls(
        local_cache_size=0, key_prefix=key_prefix.replace("file_url:", "staging:")
    )
    (fid,) = add_files(db, "a")
    file = _file(db, fid)
    here.url_for(file)
    for _ in range(4):
        there.url_for(file)
    elsewhere_stats = CacheService(elsewhere)

    # the other process flushes by itself, about once a second
    service = CacheService(here)
    wait_until(lambda: service.get_cache_stats()["hits"] == 4, "the other process's flush")
    stats = service.get_cache_stats()
    assert (stats["hits"], stats["misses"], stats["signed"]) == (4, 1, 1)
    assert elsewhere_stats.get_cache_stats()["hits"] == 0


def test_operations_raise_cache_error_when_redis_is_down(make_urls: Any, db: Any) -> None:
    urls = make_urls(redis="redis://127.0.0.1:1/0")
    service = CacheService(urls)
    for call in (
        service.get_cache_stats,
        service.clear_file_url_cache,
        lambda: service.clear_file_url_cache(5),
        service.refresh_expired_urls,
        service.count_keys,
    ):
        with pytest.raises(CacheError, match="Redis unavailable"):
            call()


# -- refresh -------------------------------------------------------------------------------


def put_entry(
    urls: SignedURLs,
    key: str,
    object_key: str,
    *,
    cache_left: int,
    url_left: int | None = None,
    url: str | None = None,
) -> bytes:
    """Write an entry as the core does, ending its cache lifetime ``cache_left`` from now."""
    now = int(time.time())
    until = now + cache_left
    expires_at = now + (
        url_left if url_left is not None else cache_left + urls.settings.min_validity
    )
    url = url or f"https://files.test/{object_key}?expires={expires_at}&sig=old"
    value = encode_entry((url, expires_at, until), signer_tag(urls.signer.name), object_key)
    urls.redis.set(key, value, ex=cache_left)
    urls.redis.zadd(f"{urls.settings.key_prefix}#expiry", {key: until})
    return value


def fields(raw: bytes) -> tuple[int, int, str]:
    expires, until, _, url, _ = raw.split(b" ", 4)
    return int(expires), int(until), url.decode()


def test_refresh_resigns_what_expires_soon_and_leaves_the_rest(
    service: CacheService,
    urls: SignedURLs,
    db: Any,
    signer: FakeSigner,
    redis_client: Any,
    key_prefix: str,
    sent: Signals,
) -> None:
    ids = add_files(db, "a.png", "b.png", "c.png")
    keys = [f"{key_prefix}{i}" for i in ids]
    put_entry(urls, keys[0], "a.png", cache_left=100)
    put_entry(urls, keys[1], "b.png", cache_left=500)
    later = put_entry(urls, keys[2], "c.png", cache_left=2000)
    now = time.time()

    assert service.refresh_expired_urls(within=600) == 2

    assert sorted(key for key, _ in signer.calls) == ["a.png", "b.png"]
    for key in keys[:2]:
        expires_at, until, url = fields(raw_key(redis_client, key) or b"")
        assert url.endswith("sig=fake")  # a fresh signature
        assert until >= now + urls.settings.cache_ttl * 0.8  # about another cache_ttl
        assert expires_at - until >= urls.settings.min_validity
        assert redis_client.ttl(key) > 600
        assert redis_client.zscore(f"{key_prefix}#expiry", key) == until
    assert raw_key(redis_client, keys[2]) == later
    assert sent.of("urls-refreshed") == [(service, {"count": 2, "within": 600})]
    # readers get the renewed URL from the cache
    with db() as session:
        renewed = session.get(File, ids[0]).url
    assert renewed is not None and renewed.endswith("sig=fake")
    assert len(signer.calls) == 2


def test_forged_urls_are_resigned_by_warm_and_refresh(
    service: CacheService, urls: SignedURLs, db: Any, signer: FakeSigner, key_prefix: str
) -> None:
    ids = add_files(db, "a.png", "b.png")
    forged = "https://evil.test/a.png?sig=1"
    long_left = urls.settings.url_ttl - 60  # would be extended, were the URL genuine
    put_entry(
        urls, f"{key_prefix}{ids[0]}", "a.png", cache_left=2000, url_left=long_left, url=forged
    )
    put_entry(
        urls, f"{key_prefix}{ids[1]}", "b.png", cache_left=100, url_left=long_left, url=forged
    )

    assert service.warm_file_url_cache(limit=1) == 1  # the newest, ids[1]: re-signed
    # ids[0] ends in 2000 s; the entry warm just wrote lives at least cache_ttl * 0.8
    assert service.refresh_expired_urls(2100) == 1

    assert sorted(key for key, _ in signer.calls) == ["a.png", "b.png"]
    for fid in ids:
        value = raw_key(urls.redis, f"{key_prefix}{fid}") or b""
        assert b"evil.test" not in value


def test_refresh_extends_without_signing_when_the_url_allows_it(
    urls: SignedURLs, redis_client: Any, key_prefix: str, signer: FakeSigner
) -> None:
    key = f"{key_prefix}7"
    # e.g. written while cache_ttl was shorter: the URL itself still has hours left
    put_entry(urls, key, "x.png", cache_left=100, url_left=urls.settings.url_ttl - 60)
    _, _, old_url = fields(raw_key(redis_client, key) or b"")

    assert CacheService(urls).refresh_expired_urls(600) == 1

    expires_at, until, url = fields(raw_key(redis_client, key) or b"")
    assert signer.calls == [] and url == old_url
    assert until > time.time() + 600
    assert expires_at - until >= urls.settings.min_validity


def test_refresh_never_brings_back_deleted_entries(
    urls: SignedURLs, redis_client: Any, key_prefix: str
) -> None:
    key = f"{key_prefix}9"
    put_entry(urls, key, "x.png", cache_left=100)
    redis_client.delete(key)  # gone (a commit, a clear, an eviction) but still in the index

    assert CacheService(urls).refresh_expired_urls(600) == 0

    assert not redis_client.exists(key)
    assert redis_client.zscore(f"{key_prefix}#expiry", key) is None


def test_refresh_cost_follows_what_expires_not_what_is_cached(
    urls: SignedURLs, redis_client: Any, key_prefix: str
) -> None:
    pipe = redis_client.pipeline(transaction=False)
    tag = signer_tag(urls.signer.name)
    now = int(time.time())
    for i in range(2000):  # a big cache that is not about to expire
        until = now + 2000
        value = encode_entry((f"https://x/{i}", until + 20000, until), tag, f"k{i}")
        pipe.set(f"{key_prefix}{i}", value, ex=2000)
    pipe.zadd(f"{key_prefix}#expiry", {f"{key_prefix}{i}": now + 2000 for i in range(2000)})
    pipe.execute()
    for i in range(5):
        put_entry(urls, f"{key_prefix}x{i}", f"e{i}", cache_left=60)
    redis_client.reset()

    assert CacheService(urls).refresh_expired_urls(600) == 5

    assert "SCAN_ITER" not in redis_client.commands and "SCAN" not in redis_client.commands
    # trim, one page of the index, one MGET, one pipelined write
    assert redis_client.round_trips <= 4


def test_refresh_pages_through_many_entries_sharing_one_score(
    urls: SignedURLs, redis_client: Any, key_prefix: str, signer: FakeSigner
) -> None:
    for i in range(11):
        put_entry(urls, f"{key_prefix}{i}", f"k{i}", cache_left=120)
    service = CacheService(urls, batch_size=4)

    assert service.refresh_expired_urls(600) == 11

    assert sorted(key for key, _ in signer.calls) == sorted(f"k{i}" for i in range(11))


def test_refresh_without_a_signer_only_extends(
    make_urls: Any, urls: SignedURLs, redis_client: Any, key_prefix: str
) -> None:
    key_short, key_long = f"{key_prefix}1", f"{key_prefix}2"
    short = put_entry(urls, key_short, "a", cache_left=100)  # needs re-signing: left alone
    put_entry(urls, key_long, "b", cache_left=100, url_left=urls.settings.url_ttl - 60)
    bare = make_urls(signer=RedisOnlySigner())

    assert CacheService(bare).refresh_expired_urls(600) == 1

    assert raw_key(redis_client, key_short) == short
    assert fields(raw_key(redis_client, key_long) or b"")[1] > time.time() + 600


def test_refresh_signing_failure_keeps_the_entry_and_logs_no_url(
    urls: SignedURLs,
    redis_client: Any,
    key_prefix: str,
    signer: FakeSigner,
    caplog_all: pytest.LogCaptureFixture,
) -> None:
    key = f"{key_prefix}3"
    before = put_entry(urls, key, "a.png", cache_left=100)
    signer.fail_with = SigningError("bucket says no")

    assert CacheService(urls).refresh_expired_urls(600) == 0

    assert raw_key(redis_client, key) == before
    assert urls.stats.sign_errors == 1
    assert any(
        "Failed to generate signed URL for file 3" in r.getMessage() for r in caplog_all.records
    )
    assert not any("https://" in r.getMessage() for r in caplog_all.records)


def test_refresh_and_warm_log_no_url(
    service: CacheService,
    urls: SignedURLs,
    db: Any,
    key_prefix: str,
    caplog_all: pytest.LogCaptureFixture,
) -> None:
    ids = add_files(db, "a.png", "b.png")
    service.warm_file_url_cache()
    put_entry(urls, f"{key_prefix}{ids[0]}", "a.png", cache_left=60)
    service.refresh_expired_urls()
    service.get_cache_stats()
    service.clear_file_url_cache()
    messages = [r.getMessage() for r in caplog_all.records]
    assert any("Refreshed 1 cached URL" in m for m in messages)
    assert any("Warmed 2 cached URL" in m for m in messages)
    assert not any("https://" in m or "sig=" in m for m in messages)


def test_refresh_rejects_bad_within(service: CacheService) -> None:
    for within in (0, -5, True, 1.5):
        with pytest.raises(ValueError, match="within"):
            service.refresh_expired_urls(within)  # type: ignore[arg-type]


def test_cache_service_is_exported_lazily() -> None:
    import sqla_signed_urls

    assert sqla_signed_urls.CacheService is CacheService
    assert logging.getLogger("sqla_signed_urls").name == "sqla_signed_urls"


# -- Redis Cluster -------------------------------------------------------------------------


def test_operations_on_a_real_redis_cluster(tmp_path: Any, db: Any, signer: FakeSigner) -> None:
    from .conftest import Base
    from .servers import RedisClusterGroup

    group = RedisClusterGroup(tmp_path / "cluster")
    group.start()
    urls = SignedURLs(signer, redis=group.url(), key_prefix="ops:file_url:", local_cache_size=0)
    try:
        urls.install(Base)
        ids = add_files(db, *(f"c/{i}.png" for i in range(40)))  # keys spread over the slots
        cache_files(urls, db, ids)
        service = CacheService(urls, session_factory=db, model=File)

        stats = service.get_cache_stats()
        assert stats["keys"] == 40 and stats["misses"] == 40
        assert stats["memory_used_bytes"] > 0 and stats["redis_db"] == 0
        assert service.count_keys() == 40
        for i in ids[:5]:
            put_entry(urls, f"ops:file_url:{i}", f"c/{i}.png", cache_left=60)
        assert service.refresh_expired_urls(600) == 5
        assert service.clear_file_url_cache(ids[0]) == 1
        assert service.clear_file_url_cache() == 39
        assert service.count_keys() == 0
        assert service.warm_file_url_cache(limit=10) == 10
    finally:
        urls.uninstall()
        urls.close()
        urls.redis.close()
        group.close()
