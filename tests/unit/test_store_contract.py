"""The shared-store contract suite (``sqla_signed_urls.testing.SharedStoreContract``) run
against the Redis store: on the in-process Redis here, on a real server when ``REDIS_URL`` is
set. The Redis Cluster run is in ``tests/servers/test_cluster.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from sqla_signed_urls.cache.redis import RedisStore
from sqla_signed_urls.testing import SharedStoreContract
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
