"""The asyncio store: ``async_client_from_url`` (the twin of ``client_from_url``: the same checks,
timeouts and messages without credentials, no I/O at construction), ``AsyncRedisStore`` failing
fast on a dead server, and the ways ``AsyncSharedStoreContract`` takes a store. The contract
itself runs in ``test_store_contract.py`` and ``tests/servers/test_cluster.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from sqla_signed_urls import ConfigurationError
from sqla_signed_urls.cache.aredis import AsyncRedisStore, async_client_from_url
from sqla_signed_urls.cache.base import AsyncSharedStore
from sqla_signed_urls.testing import AsyncSharedStoreContract, SharedStoreContract

from ..helpers.hostile import REDIS_PASSWORD, all_text_of
from ..helpers.memory_store import MemoryBackend, MemoryStore


def build(url: Any, **kwargs: Any) -> Any:
    return async_client_from_url(url, socket_timeout=0.25, **kwargs)


# -- the client built from a URL ---------------------------------------------------------------


def test_db_index_parsed_from_url_without_io() -> None:
    client = build("redis://:pw@127.0.0.1:6390/2")
    assert isinstance(client, redis.asyncio.Redis)
    assert client.connection_pool.connection_kwargs["db"] == 2
    assert ":pw@" not in repr(client)
    assert AsyncRedisStore(client, "file_url:").describe() == {"redis_db": 2}


def test_client_built_from_a_url_fails_fast() -> None:
    kwargs = build("redis://127.0.0.1:1/0").connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.25
    assert kwargs["socket_connect_timeout"] == 0.25
    assert 0 < kwargs["health_check_interval"] <= 60
    retry = kwargs["retry"]
    assert retry.get_retries() <= 1
    # A timeout is never retried: a silent server costs one socket_timeout, no more.
    assert redis.TimeoutError not in retry._supported_errors
    assert not kwargs.get("retry_on_timeout")
    assert kwargs["protocol"] == 2


def test_the_url_may_ask_for_resp3() -> None:
    client = build("redis://127.0.0.1:1/0?protocol=3")
    assert client.connection_pool.connection_kwargs["protocol"] == 3


@pytest.mark.parametrize("url", ["http://localhost:6379/0", "memcached://x", "localhost:6379"])
def test_unsupported_scheme_names_the_setting(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^redis: unsupported URL scheme"):
        build(url)
    with pytest.raises(ConfigurationError, match=r"^REDIS_URL: unsupported URL scheme"):
        build(url, setting="REDIS_URL")


def test_not_a_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"expected a redis:// URL.*got int"):
        build(6379)


MALFORMED = [
    pytest.param("//app:{pw}@127.0.0.1:6379/0", id="no-scheme"),
    pytest.param(":{pw}@127.0.0.1", id="empty-scheme"),
    pytest.param("app:{pw}@127.0.0.1:6379", id="user-as-scheme"),
    pytest.param("redis://app:{pw}/x@127.0.0.1:6379/0", id="slash-in-password"),
    pytest.param("redis://app:{pw}@127.0.0.1:notaport/0", id="bad-port"),
    pytest.param("redis://app:{pw}@[::1/0", id="bad-ipv6"),
    pytest.param("http://app:{pw}@127.0.0.1/0", id="http"),
    pytest.param("redis://app:{pw}@127.0.0.1:99999/0", id="port-out-of-range"),
    pytest.param("redis://app:{pw}@127.0.0.1:notaport/0?cluster=true", id="cluster-bad-port"),
    pytest.param("redis://app:{pw}@127.0.0.1:6379/3?cluster=true", id="cluster-db"),
    pytest.param("unix://app:{pw}@/tmp/redis.sock?cluster=true", id="cluster-unix"),
]


@pytest.mark.parametrize("template", MALFORMED)
def test_malformed_urls_raise_configuration_errors_without_the_password(template: str) -> None:
    url = template.format(pw=REDIS_PASSWORD)
    exc = _configuration_error(url)
    if exc is None:
        return  # accepted (and nothing connects at construction)
    assert isinstance(exc, ConfigurationError), repr(exc)
    assert "redis" in str(exc).lower()
    assert REDIS_PASSWORD not in all_text_of(exc)
    assert REDIS_PASSWORD[:8] not in str(exc)


def _configuration_error(url: str) -> BaseException | None:
    try:
        build(url)
    except Exception as exc:
        return exc
    return None


# -- Redis Cluster URLs ------------------------------------------------------------------------


def test_cluster_url_builds_a_cluster_client_without_io() -> None:
    client = build("redis://app:pw@127.0.0.1:1/0?cluster=true")  # nothing listens there
    assert isinstance(client, RedisCluster)
    assert AsyncRedisStore(client, "file_url:").cluster
    kwargs = client.connection_kwargs
    assert kwargs["socket_timeout"] == 0.25
    assert kwargs["socket_connect_timeout"] == 0.25
    assert kwargs["protocol"] == 2
    assert kwargs["password"] == "pw"
    assert client.retry.get_retries() <= 1


def test_cluster_url_over_tls() -> None:
    from redis.asyncio.connection import SSLConnection

    client = build("rediss://127.0.0.1:1/0?cluster=true")
    assert client.connection_kwargs["connection_class"] is SSLConnection


@pytest.mark.parametrize("db", ["1", "15"])
def test_cluster_url_with_a_db_index_is_refused(db: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build(f"redis://app:{REDIS_PASSWORD}@127.0.0.1:1/{db}?cluster=true")
    assert "no db index other than 0" in str(caught.value)
    assert "key_prefix" in str(caught.value)
    assert REDIS_PASSWORD not in all_text_of(caught.value)


def test_cluster_url_over_a_unix_socket_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^redis: a Redis Cluster is reached over redis"):
        build(f"unix://app:{REDIS_PASSWORD}@/tmp/redis.sock?cluster=true")


@pytest.mark.parametrize("query", ["", "?cluster=true"])
def test_a_dead_server_raises_one_of_the_store_errors(query: str) -> None:
    async def main() -> None:
        client = build(f"redis://127.0.0.1:1/0{query}")
        store = AsyncRedisStore(client, "file_url:")
        try:
            with pytest.raises(store.errors):
                await store.get_many(["file_url:1"])
            with pytest.raises(store.errors):
                await store.set_many([("file_url:1", b"v", 60, 1)])
        finally:
            await client.aclose()

    asyncio.run(main())


# -- the store on the in-process Redis ----------------------------------------------------------


def test_a_value_of_another_type_under_a_key_is_a_miss() -> None:
    async def main() -> None:
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        try:
            store = AsyncRedisStore(client, "file_url:")
            await client.rpush("file_url:1", "not ours")
            assert await store.get_many(["file_url:1"]) == [None]
            assert await store.get_many(["file_url:1", "file_url:2"]) == [None, None]
            assert repr(store) == "AsyncRedisStore(prefix='file_url:')"
        finally:
            await client.aclose()

    asyncio.run(main())


def test_sync_and_async_stores_share_keys_and_channel() -> None:
    """Same layout: what the async store writes, the sync one reads, and the other way round."""
    from sqla_signed_urls.cache.redis import RedisStore

    server = fakeredis.FakeServer()
    sync_store = RedisStore(fakeredis.FakeRedis(server=server), "file_url:")
    sync_store.set_many([("file_url:1", b"from sync", 60, 2_000_000_000)])
    subscription = sync_store.subscribe()

    async def main() -> None:
        client = fakeredis.FakeAsyncRedis(server=server)
        try:
            store = AsyncRedisStore(client, "file_url:")
            assert await store.get_many(["file_url:1"]) == [b"from sync"]
            await store.set_many([("file_url:2", b"from async", 60, 2_000_000_000)])
            assert await store.live_count(0) == 2
            await store.publish("file_url:2")
        finally:
            await client.aclose()

    try:
        assert subscription.next_event(timeout=5) == ("subscribed", "")
        asyncio.run(main())
        assert sync_store.get_many(["file_url:2"]) == [b"from async"]
        assert subscription.next_event(timeout=5) == ("message", "file_url:2")
    finally:
        subscription.close()
        sync_store.client.close()


# -- how AsyncSharedStoreContract takes a store -------------------------------------------------


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def test_make_store_may_be_an_async_function(server: fakeredis.FakeServer) -> None:
    clients: list[Any] = []

    async def make(prefix: str) -> AsyncRedisStore:
        client = fakeredis.FakeAsyncRedis(server=server)
        clients.append(client)
        return AsyncRedisStore(client, prefix)

    AsyncSharedStoreContract().test_counters_add_up_per_prefix(make)
    assert len(clients) == 2  # this test uses a store and its sibling


def test_make_store_may_be_a_plain_callable(server: fakeredis.FakeServer) -> None:
    made: list[AsyncSharedStore] = []

    def make(prefix: str) -> AsyncRedisStore:
        asyncio.get_running_loop()  # called inside the test's event loop
        store = AsyncRedisStore(fakeredis.FakeAsyncRedis(server=server), prefix)
        made.append(store)
        return store

    AsyncSharedStoreContract().test_publish_reaches_only_the_same_prefix(make)
    assert [store.prefix for store in made] == ["contract:file_url:", "contract:file_url_other:"]


def test_a_yielding_make_store_cleans_up_even_when_a_promise_is_broken(
    server: fakeredis.FakeServer,
) -> None:
    class Forgetful(AsyncRedisStore):
        async def read_counters(self) -> dict[str, int]:
            return {}

    closed: list[str] = []

    async def make(prefix: str) -> AsyncIterator[AsyncRedisStore]:
        client = fakeredis.FakeAsyncRedis(server=server)
        yield Forgetful(client, prefix)
        await client.aclose()
        closed.append(prefix)

    with pytest.raises(AssertionError):
        AsyncSharedStoreContract().test_counters_add_up_per_prefix(make)
    assert sorted(closed) == ["contract:file_url:", "contract:file_url_other:"]


def test_a_sync_store_given_to_the_async_suite_is_named(server: fakeredis.FakeServer) -> None:
    def make(prefix: str) -> Any:
        return MemoryStore(MemoryBackend(), prefix)

    with pytest.raises(AssertionError, match="make_store gave MemoryStore"):
        AsyncSharedStoreContract().test_memory_used_and_describe(make)


def test_sync_stores_are_checked_without_an_event_loop() -> None:
    """A sync store may run an event loop of its own inside its methods (as a sync facade over
    an async client does): the sync suite calls it from no running loop."""

    class Facade(MemoryStore):
        def read_counters(self) -> dict[str, int]:
            async def read() -> dict[str, int]:
                return MemoryStore.read_counters(self)

            return asyncio.run(read())

    def make_store() -> Callable[[str], MemoryStore]:
        backend = MemoryBackend()
        return lambda prefix: Facade(backend, prefix)

    contract = SharedStoreContract()
    contract.test_counters_add_up_per_prefix(make_store())
    contract.test_clear_removes_only_this_prefix(make_store())
