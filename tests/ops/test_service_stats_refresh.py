"""CacheService statistics and refreshing: counters, keys and the db, this process's unflushed
counts, fleet-wide totals per key prefix, errors when Redis is down, and re-signing or
extending the entries that expire soon.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from sqla_signed_urls import CacheError, CacheService, SignedURLs, SigningError
from sqla_signed_urls.cache.base import encode_entry, signer_tag
from sqla_signed_urls.service import RedisOnlySigner
from sqla_signed_urls.testing import FakeSigner

from ..conftest import REDIS_URL, Base, File, add_files, cache_files, load_file, wait_until
from ..helpers.entries import fields, put_entry, raw_key
from .conftest import Signals

# -- stats -------------------------------------------------------------------------------------


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
    here = make_urls(local_cache_size=0)
    here.install(Base)
    there = make_urls(local_cache_size=0)  # another process: same Redis, same prefix
    there.install(Base)
    elsewhere = make_urls(
        local_cache_size=0, key_prefix=key_prefix.replace("file_url:", "staging:")
    )
    (fid,) = add_files(db, "a")
    file = load_file(db, fid)
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


# -- refresh -----------------------------------------------------------------------------------


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
