"""Scale: a real 3-master Redis Cluster and a real Sentinel on loopback ports.

The module's tests share one cluster (the ``redis_cluster`` fixture: three ``redis-server
--cluster-enabled yes``, joined with ``redis-cli --cluster create``), torn down at the end of
the module; every test uses a key prefix of its own, which is also how environments share one
cluster (a cluster has no db index). The test that kills a master has a cluster of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import redis
from redis.cluster import RedisCluster
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.cache.aredis import AsyncRedisStore
from sqla_signed_urls.cache.redis import RedisStore
from sqla_signed_urls.testing import AsyncSharedStoreContract, FakeSigner, SharedStoreContract
from sqla_signed_urls.types import ObjectKey

from ..conftest import wait_until
from ._groups import RedisClusterGroup, SentinelGroup
from ._processes import (
    free_port,
    open_connections_to,
    reap_unclosed_sockets,
)

N_FILES = 60


class ClusterBase(DeclarativeBase):
    pass


class ClusterFile(ClusterBase):
    __tablename__ = "cluster_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    file_type: Mapped[str] = mapped_column(String(32), default="attachment")


def key_of(url: str | None) -> str:
    assert url is not None
    return unquote(urlsplit(url).path[1:])


def wait_listening(urls: SignedURLs) -> None:
    """Until the process's invalidation listener is subscribed (its in-process layer is live).

    The listener starts with the first read. Reads ``urls.channel.live``, because an L1 fill is
    otherwise invisible from outside.
    """
    wait_until(lambda: urls.channel.live, "the listener to subscribe")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:file_url:"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'redis_cluster.db'}")
    ClusterBase.metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        session.add_all(
            ClusterFile(id=i, object_key=f"posts/{i}/image.png") for i in range(1, N_FILES + 1)
        )
        session.commit()
    yield factory
    engine.dispose()


@pytest.fixture
def made() -> Iterator[Callable[..., SignedURLs]]:
    built: list[SignedURLs] = []
    clients: list[Any] = []

    def make(client: Any, *, prefix: str, install: bool = True, **kwargs: Any) -> SignedURLs:
        kwargs.setdefault("signer", FakeSigner())
        kwargs.setdefault("retry_after", 0.2)
        urls = SignedURLs(redis=client, key_prefix=prefix, **kwargs)
        if install:
            urls.install(ClusterBase)
        built.append(urls)
        clients.append(urls.redis)
        return urls

    yield make
    for urls in built:
        urls.uninstall()
        urls.close()
    for client in clients:
        client.close()
    built.clear()
    clients.clear()
    reap_unclosed_sockets()


def cluster_client(cluster: RedisClusterGroup) -> RedisCluster:
    return RedisCluster(
        startup_nodes=cluster.startup_nodes(), socket_timeout=1.0, socket_connect_timeout=1.0
    )


@pytest.fixture(params=["client", "url"])
def cluster_redis(request: pytest.FixtureRequest, redis_cluster: RedisClusterGroup) -> Any:
    """What ``SignedURLs(redis=...)`` gets: a ready ``RedisCluster`` or a ``?cluster=true`` URL."""
    if request.param == "client":
        return cluster_client(redis_cluster)
    return redis_cluster.url()


class CallCounter:
    """Counts calls of chosen methods on one client instance (keeps its class intact)."""

    def __init__(self, client: Any, names: tuple[str, ...], monkeypatch: pytest.MonkeyPatch):
        self.calls: dict[str, int] = dict.fromkeys(names, 0)
        for name in names:
            original = getattr(client, name)

            def counted(*args: Any, _name: str = name, _orig: Any = original, **kw: Any) -> Any:
                self.calls[_name] += 1
                return _orig(*args, **kw)

            monkeypatch.setattr(client, name, counted)


def read_page(db: sessionmaker[Session], urls: SignedURLs) -> list[str | None]:
    with db() as session:
        files = session.query(ClusterFile).order_by(ClusterFile.id).all()
        page = urls.resolve(files)
        assert [f.url for f in files] == page
        for f, url in zip(files, page, strict=True):
            assert key_of(url) == f.object_key
    return page


# -- Redis Cluster -----------------------------------------------------------------------------


def test_reads_resolve_and_invalidation_on_every_master(
    redis_cluster: RedisClusterGroup,
    cluster_redis: Any,
    made: Callable[..., SignedURLs],
    db: sessionmaker[Session],
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    urls = made(cluster_redis, prefix=prefix, local_cache_size=0)
    signer = urls.signer
    assert isinstance(signer, FakeSigner)

    first = read_page(db, urls)
    assert len(signer.calls) == N_FILES
    per_master = redis_cluster.keys_per_master(prefix + "[0-9]*")
    assert sum(per_master.values()) == N_FILES
    assert all(count > 0 for count in per_master.values()), per_master

    counter = CallCounter(urls.redis, ("get", "mget", "mget_nonatomic"), monkeypatch)
    with db() as session:
        files = session.query(ClusterFile).order_by(ClusterFile.id).all()
        assert urls.resolve(files) == first  # all from Redis: no signing
    assert len(signer.calls) == N_FILES
    assert counter.calls == {"get": 0, "mget": 0, "mget_nonatomic": 1}
    assert urls.stats.errors == 0

    with db() as session:
        session.get(ClusterFile, 7).object_key = "posts/7/new.png"
        session.delete(session.get(ClusterFile, 8))
        session.commit()
    probe = cluster_client(redis_cluster)
    try:
        assert probe.exists(f"{prefix}7") == 0
        assert probe.exists(f"{prefix}8") == 0
        assert probe.exists(f"{prefix}9") == 1
    finally:
        probe.close()
    with db() as session:
        assert key_of(session.get(ClusterFile, 7).url) == "posts/7/new.png"
        assert session.get(ClusterFile, 8) is None
    assert urls.stats.errors == 0


def test_aresolve_on_the_cluster_from_a_cluster_url(
    redis_cluster: RedisClusterGroup,
    made: Callable[..., SignedURLs],
    db: sessionmaker[Session],
    prefix: str,
) -> None:
    """``?cluster=true`` gives async code a ``redis.asyncio`` cluster client too."""
    urls = made(redis_cluster.url(), prefix=prefix, local_cache_size=0)
    signer = urls.signer
    assert isinstance(signer, FakeSigner)

    async def pages() -> tuple[list[str | None], list[str | None]]:
        with db() as session:
            files = session.query(ClusterFile).order_by(ClusterFile.id).all()
        try:
            return await urls.aresolve(files), await urls.aresolve(files)
        finally:
            await urls.aclose()

    first, again = asyncio.run(pages())
    assert first == again and all(first)
    assert len(signer.calls) == N_FILES, "the second page came from the cluster"
    assert [key_of(url) for url in first] == [f"posts/{i}/image.png" for i in range(1, 61)]
    per_master = redis_cluster.keys_per_master(prefix + "[0-9]*")
    assert sum(per_master.values()) == N_FILES
    assert urls.stats.errors == 0


def test_clear_scans_and_unlinks_on_every_master(
    redis_cluster: RedisClusterGroup,
    cluster_redis: Any,
    made: Callable[..., SignedURLs],
    db: sessionmaker[Session],
    prefix: str,
) -> None:
    urls = made(cluster_redis, prefix=prefix, local_cache_size=0)
    read_page(db, urls)
    scanned = [key for batch in urls.store.scan_keys(count=7) for key in batch]
    assert sorted(scanned) == sorted(f"{prefix}{i}" for i in range(1, N_FILES + 1))
    removed = sum(urls.store.delete_many(batch) for batch in urls.store.scan_keys(count=7))
    assert removed == N_FILES
    assert redis_cluster.keys_per_master(prefix + "[0-9]*") == dict.fromkeys(redis_cluster.ports, 0)
    read_page(db, urls)  # and it fills again
    assert sum(redis_cluster.keys_per_master(prefix + "[0-9]*").values()) == N_FILES


def test_key_prefixes_isolate_environments(
    redis_cluster: RedisClusterGroup, made: Callable[..., SignedURLs], db: sessionmaker[Session]
) -> None:
    staging_prefix = f"s{uuid.uuid4().hex[:6]}:file_url:"
    prod_prefix = f"p{uuid.uuid4().hex[:6]}:file_url:"
    staging = made(cluster_client(redis_cluster), prefix=staging_prefix, local_cache_size=0)
    # A second environment on the same cluster, as another app would install it.
    prod = made(cluster_client(redis_cluster), prefix=prod_prefix, install=False)
    read_page(db, staging)
    probe = cluster_client(redis_cluster)
    try:
        probe.set(f"{prod_prefix}1", b"not ours to touch")
        for batch in staging.store.scan_keys():
            staging.store.delete_many(batch)
        assert probe.get(f"{prod_prefix}1") == b"not ours to touch"
        assert sum(redis_cluster.keys_per_master(staging_prefix + "[0-9]*").values()) == 0
        assert prod.store.channel != staging.store.channel
    finally:
        probe.delete(f"{prod_prefix}1")
        probe.close()


def test_invalidation_reaches_every_process_in_process_layer(
    redis_cluster: RedisClusterGroup,
    made: Callable[..., SignedURLs],
    db: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pub/sub on a cluster: an invalidation in one process drops the key from another's L1.

    The reader stands for another process: its own client, in-process layer, listener and
    signer. Its signer is called again only once its L1 entry is gone (Redis no longer has
    the key either), which is what the test waits for.
    """
    prefix = f"t{uuid.uuid4().hex[:8]}:file_url:"
    writer = made(cluster_client(redis_cluster), prefix=prefix, local_cache_size=0)
    reader = made(cluster_client(redis_cluster), prefix=prefix, local_cache_size=1000)
    reader_signer = reader.signer
    assert isinstance(reader_signer, FakeSigner)
    with db() as session:
        file = session.get(ClusterFile, 11)
        url = reader.url_for(file)  # signs, stores in Redis, starts the listener
        wait_listening(reader)
        assert reader.url_for(file) == url  # from Redis, into the L1
        assert len(reader_signer.calls) == 1
        counter = CallCounter(reader.redis, ("get", "mget_nonatomic"), monkeypatch)
        assert reader.url_for(file) == url
        assert counter.calls == {"get": 0, "mget_nonatomic": 0}  # served from the L1

        writer.invalidate(file)

        def dropped() -> bool:
            assert key_of(reader.url_for(file)) == "posts/11/image.png"  # never wrong meanwhile
            return len(reader_signer.calls) == 2

        wait_until(dropped, "the reader to drop its in-process copy")
    assert reader.stats.errors == 0


def test_cluster_url_builds_a_fail_fast_cluster_client(redis_cluster: RedisClusterGroup) -> None:
    urls = SignedURLs(FakeSigner(), redis=redis_cluster.url(), key_prefix="cfg:")
    try:
        client = urls.redis  # a RedisCluster (or a proxy that builds one on first use)
        node = client.get_primaries()[0]
        kwargs = node.redis_connection.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25
        assert kwargs["socket_connect_timeout"] == 0.25
        assert client.retry.get_retries() <= 1
        del client, node
    finally:
        urls.close()
        urls.redis.close()
        del urls
        reap_unclosed_sockets()


@pytest.mark.parametrize(
    "kind",
    [
        "client",
        "url",
    ],
)
def test_close_releases_every_connection(
    redis_cluster: RedisClusterGroup, db: sessionmaker[Session], kind: str
) -> None:
    """After ``close()`` no socket to the cluster is left for the garbage collector (which
    would turn it into a ResourceWarning somewhere else)."""
    before = open_connections_to(redis_cluster.ports)
    if before is None:
        pytest.skip("needs /proc to count this process's connections")
    client = cluster_client(redis_cluster) if kind == "client" else redis_cluster.url()
    urls = SignedURLs(FakeSigner(), redis=client, key_prefix=f"close{kind}:", retry_after=0.2)
    urls.install(ClusterBase)
    try:
        read_page(db, urls)
        read_page(db, urls)
        assert open_connections_to(redis_cluster.ports) > before
    finally:
        urls.uninstall()
        urls.close()
        urls.redis.close()
    after = open_connections_to(redis_cluster.ports)
    del urls, client
    reap_unclosed_sockets()
    assert after == before


def test_cluster_url_while_the_cluster_is_down_at_start(
    made: Callable[..., SignedURLs], db: sessionmaker[Session]
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0?cluster=true"
    urls = made(dead, prefix="down:")  # construction does no network I/O
    with db() as session:
        file = session.get(ClusterFile, 1)
        assert key_of(file.url) == "posts/1/image.png"
    assert urls.stats.breaker_opened == 1


def test_a_killed_master_never_breaks_file_url(
    made: Callable[..., SignedURLs],
    db: sessionmaker[Session],
    disposable_redis_cluster: RedisClusterGroup,
) -> None:
    """Its own cluster: one master is killed mid-traffic; pages keep coming, errors counted."""
    urls = made(
        RedisCluster(
            startup_nodes=disposable_redis_cluster.startup_nodes(),
            socket_timeout=0.25,
            socket_connect_timeout=0.25,
        ),
        prefix="k:",
        local_cache_size=0,
    )
    read_page(db, urls)
    disposable_redis_cluster.masters[1].kill()
    for _ in range(5):
        read_page(db, urls)
    assert urls.stats.errors >= 1
    assert urls.stats.breaker_opened >= 1
    urls.close()


# -- CacheService on the cluster ---------------------------------------------------------------


def _cache_service() -> Any:
    try:
        from sqla_signed_urls.service import CacheService
    except ImportError as exc:  # pragma: no cover - until the service lands
        pytest.skip(f"CacheService is not importable yet: {exc}")
    return CacheService


def test_cache_service_clear_stats_refresh_on_the_cluster(
    redis_cluster: RedisClusterGroup,
    cluster_redis: Any,
    made: Callable[..., SignedURLs],
    db: sessionmaker[Session],
    prefix: str,
) -> None:
    service_cls = _cache_service()
    urls = made(cluster_redis, prefix=prefix, local_cache_size=0)
    service = service_cls(urls, session_factory=db, model=ClusterFile)
    read_page(db, urls)
    read_page(db, urls)
    urls.flush_stats()
    stats = service.get_cache_stats()
    assert stats["keys"] == N_FILES
    assert stats["hits"] >= N_FILES
    assert stats["misses"] >= N_FILES
    assert stats["key_prefix"] == prefix

    renewed = service.refresh_expired_urls(within=urls.settings.cache_ttl * 2)
    assert renewed == N_FILES
    assert sum(redis_cluster.keys_per_master(prefix + "[0-9]*").values()) == N_FILES

    removed = service.clear_file_url_cache()
    assert removed == N_FILES
    assert redis_cluster.keys_per_master(prefix + "[0-9]*") == dict.fromkeys(redis_cluster.ports, 0)
    assert service.get_cache_stats()["keys"] == 0
    read_page(db, urls)
    assert service.get_cache_stats()["keys"] == N_FILES


# -- Sentinel ----------------------------------------------------------------------------------


def test_sentinel_managed_master_passed_as_client(
    redis_sentinel: SentinelGroup, made: Callable[..., SignedURLs], db: sessionmaker[Session]
) -> None:
    from redis.sentinel import Sentinel

    sentinel = Sentinel(redis_sentinel.sentinels, socket_timeout=0.25)
    try:
        master = sentinel.master_for(
            redis_sentinel.service_name, socket_timeout=0.25, socket_connect_timeout=0.25
        )
        urls = made(master, prefix="file_url:")
        first = read_page(db, urls)
        assert read_page(db, urls) == first
        signer = urls.signer
        assert isinstance(signer, FakeSigner)
        assert len(signer.calls) == N_FILES
        with redis.Redis(port=redis_sentinel.master.port, socket_timeout=5) as direct:
            assert direct.exists("file_url:3") == 1
            with db() as session:
                session.get(ClusterFile, 3).object_key = "posts/3/new.png"
                session.commit()
            assert direct.exists("file_url:3") == 0
        assert key_of(read_page(db, urls)[2]) == "posts/3/new.png"
        assert urls.stats.errors == 0
    finally:
        for client in sentinel.sentinels:
            client.close()


# -- the shared-store contract on Redis Cluster ------------------------------------------------


class TestRedisStoreOnCluster(SharedStoreContract):
    """The contract suite every shared store passes, on three masters."""

    prefix = f"t{uuid.uuid4().hex[:8]}:contract:file_url:"

    @pytest.fixture
    def make_store(self, redis_cluster: RedisClusterGroup) -> Iterator[Callable[[str], Any]]:
        client = cluster_client(redis_cluster)
        yield lambda prefix: RedisStore(client, prefix)
        for key in list(client.scan_iter(match=self.prefix.split(":", 1)[0] + ":*")):
            client.unlink(key)  # one key at a time: keys of one test live on every master
        client.close()


class TestAsyncRedisStoreOnCluster(AsyncSharedStoreContract):
    """The same contract, on the asyncio client of the same three masters."""

    prefix = f"t{uuid.uuid4().hex[:8]}:acontract:file_url:"

    @pytest.fixture
    def make_store(
        self, redis_cluster: RedisClusterGroup
    ) -> Iterator[Callable[[str], AsyncIterator[AsyncRedisStore]]]:
        from redis.asyncio.cluster import ClusterNode
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

        nodes = [(node.host, node.port) for node in redis_cluster.startup_nodes()]

        async def make(prefix: str) -> AsyncIterator[AsyncRedisStore]:
            client = AsyncRedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            )
            yield AsyncRedisStore(client, prefix)
            await client.aclose()

        yield make
        client = cluster_client(redis_cluster)
        for key in list(client.scan_iter(match=self.prefix.split(":", 1)[0] + ":*")):
            client.unlink(key)  # one key at a time: keys of one test live on every master
        client.close()
