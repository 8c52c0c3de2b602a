"""CacheService clearing and warming through the public API and Redis: one file or all (SCAN
and UNLINK, other data spared, every process told), warming the newest rows, by type and
date, in batches, and bad arguments refused.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import DateTime, Engine, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import CacheService, ConfigurationError, ObjectKey, SignedURLs
from sqla_signed_urls.cache.base import signer_tag
from sqla_signed_urls.testing import FakeSigner

from ..conftest import Base, File, add_files, cache_files, load_file, wait_until
from ..helpers.entries import raw_key
from .conftest import Signals


@pytest.fixture
def foreign_key(key_prefix: str, redis_client: Any) -> Iterator[str]:
    """A key outside the URL prefix (someone else's data in the same Redis db)."""
    key = key_prefix.replace("file_url:", "") + "session:abc"
    redis_client.set(key, b"keep me")
    yield key
    redis_client.delete(key)


# -- clear -------------------------------------------------------------------------------------


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


# -- warm --------------------------------------------------------------------------------------


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
    value = decode_entry(raw_key(urls.redis, urls.cache_key(load_file(db, fid)) or ""))
    assert value is not None
    assert value.tag == signer_tag(urls.signer.name) and value.object_key == "x.png"
    assert value.expires_at - value.cache_until >= urls.settings.min_validity
    assert value.cache_until > time.time()


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
