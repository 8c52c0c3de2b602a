"""The shared-store contract suites (``sqla_signed_urls.testing.SharedStoreContract`` and
``AsyncSharedStoreContract``) run against the Redis store and its asyncio twin: on the
in-process Redis here, on a real server when ``REDIS_URL`` is set. The Redis Cluster runs are in
``tests/servers/test_cluster.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import fakeredis
import pytest

from sqla_signed_urls.cache.aredis import AsyncRedisStore
from sqla_signed_urls.cache.redis import RedisStore
from sqla_signed_urls.testing import AsyncSharedStoreContract, SharedStoreContract
from tests.conftest import REDIS_URL, RUN_ID, need_server


class TestRedisStoreInProcess(SharedStoreContract):
    @pytest.fixture
    def make_store(self) -> Callable[[str], RedisStore]:
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return lambda prefix: RedisStore(client, prefix)


@pytest.mark.server
class TestRedisStoreOnServer(SharedStoreContract):
    prefix = f"t{RUN_ID}:contract:file_url:"

    @pytest.fixture
    def make_store(self) -> Iterator[Callable[[str], RedisStore]]:
        import redis

        client: Any = redis.Redis.from_url(need_server("REDIS_URL", REDIS_URL))
        yield lambda prefix: RedisStore(client, prefix)
        leftovers = list(client.scan_iter(match=f"t{RUN_ID}:contract:*"))
        if leftovers:
            client.unlink(*leftovers)
        client.close()


# -- the asyncio store ----------------------------------------------------------------------------


class TestAsyncRedisStoreInProcess(AsyncSharedStoreContract):
    @pytest.fixture
    def make_store(self) -> Callable[[str], AsyncIterator[AsyncRedisStore]]:
        server = fakeredis.FakeServer()

        async def make(prefix: str) -> AsyncIterator[AsyncRedisStore]:
            client = fakeredis.FakeAsyncRedis(server=server)
            yield AsyncRedisStore(client, prefix)
            await client.aclose()

        return make


@pytest.mark.server
class TestAsyncRedisStoreOnServer(AsyncSharedStoreContract):
    prefix = f"t{RUN_ID}:acontract:file_url:"

    @pytest.fixture
    def make_store(self) -> Iterator[Callable[[str], AsyncIterator[AsyncRedisStore]]]:
        import redis
        import redis.asyncio

        url = need_server("REDIS_URL", REDIS_URL)

        async def make(prefix: str) -> AsyncIterator[AsyncRedisStore]:
            client = redis.asyncio.Redis.from_url(url)
            yield AsyncRedisStore(client, prefix)
            await client.aclose()

        yield make
        with redis.Redis.from_url(url) as client:
            leftovers = list(client.scan_iter(match=f"t{RUN_ID}:acontract:*"))
            if leftovers:
                client.unlink(*leftovers)
