"""The Prometheus exporter reads the counters at scrape time."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import CacheService, SignedURLs
from sqla_signed_urls.metrics import CacheCollector, register

from ..conftest import File


def read_files(urls: SignedURLs, db: sessionmaker[Session], *keys: str) -> list[int]:
    with db() as session:
        files = [File(object_key=key) for key in keys]
        session.add_all(files)
        session.commit()
        urls.resolve(files)
        urls.resolve(files[:1])
        return [f.id for f in files]


def value(registry: CollectorRegistry, name: str, prefix: str) -> float | None:
    return registry.get_sample_value(name, {"key_prefix": prefix})


def test_process_counters_at_scrape_time(
    urls: SignedURLs, db: Any, key_prefix: str, redis_client: Any
) -> None:
    registry = CollectorRegistry()
    register(urls, registry=registry)
    read_files(urls, db, "a.png", "b.png", "c.png")  # 3 misses, 3 signed, then 1 hit
    redis_client.reset()

    text = generate_latest(registry).decode()

    assert value(registry, "sqla_signed_urls_cache_hits_total", key_prefix) == 1
    assert value(registry, "sqla_signed_urls_cache_misses_total", key_prefix) == 3
    assert value(registry, "sqla_signed_urls_urls_signed_total", key_prefix) == 3
    assert value(registry, "sqla_signed_urls_cache_errors_total", key_prefix) == 0
    assert value(registry, "sqla_signed_urls_invalidations_total", key_prefix) == 0
    assert value(registry, "sqla_signed_urls_cache_hit_ratio", key_prefix) == pytest.approx(0.25)
    assert value(registry, "sqla_signed_urls_redis_up", key_prefix) == 1
    assert "# TYPE sqla_signed_urls_cache_hits_total counter" in text
    # a scrape in process mode asks Redis nothing
    assert not {"HGETALL", "ZCOUNT", "INFO"} & set(redis_client.commands)


def test_scrapes_follow_new_traffic(urls: SignedURLs, db: Any, key_prefix: str) -> None:
    registry = CollectorRegistry()
    registry.register(CacheCollector(urls))
    assert value(registry, "sqla_signed_urls_cache_hits_total", key_prefix) == 0
    read_files(urls, db, "a.png")
    assert value(registry, "sqla_signed_urls_cache_hits_total", key_prefix) == 1


def test_fleet_mode_reads_the_shared_totals(
    make_urls: Any, urls: SignedURLs, db: Any, key_prefix: str
) -> None:
    ids = read_files(urls, db, "a.png", "b.png")
    other = make_urls(local_cache_size=0)  # another process, same Redis and prefix
    other.stats.hits += 5
    other.flush_stats()
    registry = CollectorRegistry()
    register(CacheService(urls), fleet=True, registry=registry)

    assert value(registry, "sqla_signed_urls_cache_hits_total", key_prefix) == 6
    assert value(registry, "sqla_signed_urls_cache_misses_total", key_prefix) == 2
    assert value(registry, "sqla_signed_urls_cached_keys", key_prefix) == len(ids)
    assert value(registry, "sqla_signed_urls_redis_up", key_prefix) == 1


def test_fleet_mode_with_redis_down_reports_it_and_does_not_raise(make_urls: Any) -> None:
    down = make_urls(redis="redis://127.0.0.1:1/0", key_prefix="down:")
    registry = CollectorRegistry()
    register(CacheService(down), fleet=True, registry=registry)  # no Redis needed to register
    assert value(registry, "sqla_signed_urls_redis_up", "down:") == 0
    assert value(registry, "sqla_signed_urls_cache_hits_total", "down:") is None


def test_fleet_mode_needs_a_service(urls: SignedURLs) -> None:
    with pytest.raises(TypeError, match="CacheService"):
        CacheCollector(urls, fleet=True)
    with pytest.raises(TypeError, match="SignedURLs"):
        CacheCollector("redis://localhost")  # type: ignore[arg-type]
