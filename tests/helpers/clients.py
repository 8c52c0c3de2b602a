"""The test servers from async code: a counted sync and ``redis.asyncio`` client pair on one
Redis (fakeredis, or ``REDIS_URL``), and an async engine (aiosqlite, or asyncpg on
``DATABASE_URL``); each with its cleanup."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fakeredis
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sqla_signed_urls.testing import CountingAsyncRedis, CountingRedis

REDIS_URL = os.environ.get("REDIS_URL") or None
DATABASE_URL = os.environ.get("DATABASE_URL") or None


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


@asynccontextmanager
async def async_database(tmp_path: Path, metadata: MetaData) -> AsyncIterator[AsyncEngine]:
    """An async engine with ``metadata``'s tables: aiosqlite in ``tmp_path``, or asyncpg in a
    PostgreSQL schema of its own when ``DATABASE_URL`` is set; dropped and disposed after."""
    schema = f"t_async_{uuid.uuid4().hex[:10]}"
    if DATABASE_URL:
        url = DATABASE_URL.replace("+psycopg", "+asyncpg").replace(
            "postgresql://", "postgresql+asyncpg://"
        )
        engine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    else:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
    async with engine.begin() as conn:
        if DATABASE_URL:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            if DATABASE_URL:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()
