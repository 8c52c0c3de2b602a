"""A counted sync and ``redis.asyncio`` client pair on one Redis: fakeredis (one server for
both), or ``REDIS_URL`` when it is set; and their cleanup."""

from __future__ import annotations

import os
from typing import Any

import fakeredis

from sqla_signed_urls.testing import CountingAsyncRedis, CountingRedis

REDIS_URL = os.environ.get("REDIS_URL") or None


def client_pair(
    *, this_thread_only: bool = False, async_wrapper: type[CountingAsyncRedis] = CountingAsyncRedis
) -> tuple[CountingRedis, CountingAsyncRedis]:
    """``(sync, async)`` clients counting their round trips, both on the same data."""
    raw: Any
    araw: Any
    if REDIS_URL:
        import redis
        import redis.asyncio

        raw, araw = redis.Redis.from_url(REDIS_URL), redis.asyncio.Redis.from_url(REDIS_URL)
    else:
        server = fakeredis.FakeServer()
        raw, araw = fakeredis.FakeRedis(server=server), fakeredis.FakeAsyncRedis(server=server)
    return CountingRedis(raw, this_thread_only=this_thread_only), async_wrapper(araw)


async def close_pair(sync: CountingRedis, aio: CountingAsyncRedis, prefix: str) -> None:
    """Remove the keys under ``prefix`` from a real server, then close both clients."""
    if REDIS_URL:
        keys = [k async for k in aio._client.scan_iter(match=prefix + "*")]
        if keys:
            await aio._client.unlink(*keys)
    sync._client.close()
    await aio._client.aclose()
