"""The seams the architecture promises: settings as one object, any shared store (here a second,
in-memory implementation that passes the same contract suite as Redis) under ``SignedURLs`` and
``CacheService``, and the fail-open policy around whatever store is used."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import CacheService, ConfigurationError, Settings, SignedURLs, signals
from sqla_signed_urls.testing import FakeSigner, SharedStoreContract

from ..conftest import File, add_files, wait_until
from ..helpers.memory_store import MemoryBackend, MemoryStore


class TestMemoryStore(SharedStoreContract):
    @pytest.fixture
    def make_store(self) -> Callable[[str], MemoryStore]:
        backend = MemoryBackend()
        return lambda prefix: MemoryStore(backend, prefix)


# -- settings ------------------------------------------------------------------------------------


def test_settings_object_with_keywords_on_top(signer: FakeSigner) -> None:
    base = Settings(cache_ttl=600, url_ttl=3600, key_prefix="img:")
    store = MemoryStore(MemoryBackend(), "img:")
    urls = SignedURLs(signer, settings=base, store=store, cache_ttl=900)
    try:
        assert urls.settings == Settings(cache_ttl=900, url_ttl=3600, key_prefix="img:")
        assert base.cache_ttl == 600, "the caller's settings are left as they were"
    finally:
        urls.close()


def test_unknown_keyword_names_the_setting(signer: FakeSigner) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown setting\(s\): cache_timeout; known: "):
        SignedURLs(signer, store=MemoryStore(MemoryBackend(), "file_url:"), cache_timeout=60)


def test_settings_must_be_a_settings_object(signer: FakeSigner) -> None:
    with pytest.raises(ConfigurationError, match=r"settings=\{'cache_ttl': 60\}: expected"):
        SignedURLs(signer, settings={"cache_ttl": 60})  # type: ignore[arg-type]


def test_store_and_redis_are_exclusive_and_checked(signer: FakeSigner) -> None:
    store = MemoryStore(MemoryBackend(), "file_url:")
    with pytest.raises(ConfigurationError, match="the store's prefix 'file_url:' differs from "):
        SignedURLs(signer, store=store, key_prefix="img:")
    with pytest.raises(ConfigurationError, match=r"pass redis=\.\.\. or store=\.\.\., not both"):
        SignedURLs(signer, store=store, redis="redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError, match="expected a SharedStore, got dict"):
        SignedURLs(signer, store={})  # type: ignore[arg-type]


# -- another store under SignedURLs and CacheService ---------------------------------------------


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def on_memory(
    make_urls: Callable[..., SignedURLs], backend: MemoryBackend, key_prefix: str
) -> Callable[..., SignedURLs]:
    def make(**kwargs: Any) -> SignedURLs:
        urls = make_urls(redis=None, store=MemoryStore(backend, key_prefix), **kwargs)
        urls.install(File)
        return urls

    return make


def _url(db: sessionmaker[Session], fid: int, urls: SignedURLs) -> str | None:
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        return urls.url_for(file)


def test_file_url_is_cached_in_the_store_and_invalidated_on_commit(
    on_memory: Callable[..., SignedURLs],
    backend: MemoryBackend,
    db: sessionmaker[Session],
    signer: FakeSigner,
    key_prefix: str,
) -> None:
    urls = on_memory(local_cache_size=0)
    (fid,) = add_files(db, "a.png")
    first = _url(db, fid, urls)
    assert first is not None and first == _url(db, fid, urls)
    assert len(signer.calls) == 1, "the second read came from the store"
    assert f"{key_prefix}{fid}" in backend.values
    assert urls.store.live_count(0) == 1
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        file.object_key = "b.png"
        session.commit()
    assert f"{key_prefix}{fid}" not in backend.values
    assert _url(db, fid, urls) == f"https://files.test/b.png?expires={signer.calls[-1][1]}&sig=fake"


def test_invalidation_reaches_another_process_in_process_layer(
    on_memory: Callable[..., SignedURLs],
    db: sessionmaker[Session],
    signer: FakeSigner,
    key_prefix: str,
) -> None:
    reader, writer = on_memory(), on_memory(local_cache_size=0)
    (fid,) = add_files(db, "a.png")
    _url(db, fid, reader)
    wait_until(lambda: reader.channel.live, "the reader's listener to subscribe")
    _url(db, fid, reader)  # into the reader's L1
    assert reader.local is not None and f"{key_prefix}{fid}" in reader.local._data
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        writer.invalidate(file)
    wait_until(
        lambda: reader.local is not None and f"{key_prefix}{fid}" not in reader.local._data,
        "the invalidation to reach the reader",
    )


def test_cache_service_runs_on_another_store(
    on_memory: Callable[..., SignedURLs], db: sessionmaker[Session], signer: FakeSigner
) -> None:
    urls = on_memory(local_cache_size=0)
    add_files(db, "a.png", "b.png", "c.png")
    service = CacheService(urls, session_factory=db, model=File)
    assert service.warm_file_url_cache() == 3
    stats = service.get_cache_stats()
    assert (stats["keys"], stats["memory_used_bytes"], stats["signed"]) == (3, None, 3)
    assert service.refresh_expired_urls(within=urls.settings.cache_ttl + 60) == 3
    assert service.count_keys() == 3
    assert service.clear_file_url_cache() == 3
    assert service.count_keys() == 0


# -- the fail-open policy around any store -------------------------------------------------------


class BrokenStore(MemoryStore):
    def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]:
        raise ConnectionError("store unreachable")


def test_a_failing_store_of_any_kind_degrades_to_direct_signing(
    make_urls: Callable[..., SignedURLs],
    db: sessionmaker[Session],
    signer: FakeSigner,
    key_prefix: str,
) -> None:
    urls = make_urls(redis=None, store=BrokenStore(MemoryBackend(), key_prefix))
    urls.install(File)
    errors: list[BaseException] = []

    def record(sender: Any, error: BaseException) -> None:
        errors.append(error)

    (fid,) = add_files(db, "a.png")
    with signals.cache_error.connected_to(record, sender=urls):
        assert _url(db, fid, urls) == _url(db, fid, urls) is not None
    assert [str(e) for e in errors] == ["store unreachable"], "one probe, then the breaker"
    assert (urls.stats.errors, urls.stats.breaker_opened) == (1, 1)
    assert not urls.redis_available
