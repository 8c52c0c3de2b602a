"""Async apps: ``aresolve()``, ``await obj.awaitable_attrs.url``, a plain ``obj.url`` inside a
coroutine, and invalidation under ``AsyncSession`` — on aiosqlite and the in-process Redis, or
asyncpg/PostgreSQL and a real Redis when ``DATABASE_URL`` / ``REDIS_URL`` are set.

Each test runs its own event loop (``asyncio.run``): no async test plugin is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, delete, select, update
from sqlalchemy.ext.asyncio import (
    AsyncAttrs,
    AsyncSession,
    async_sessionmaker,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_signed_urls import ObjectKey, SignedURLs, core
from sqla_signed_urls.cache.base import decode_entry
from sqla_signed_urls.testing import CountingAsyncRedis, CountingRedis, FakeSigner

from ..conftest import REDIS_URL, RUN_ID
from ..helpers.clients import async_database, client_pair, close_pair


class ABase(AsyncAttrs, DeclarativeBase):
    pass


class AFile(ABase):
    __tablename__ = "async_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    file_type: Mapped[str] = mapped_column(String(32), default="attachment")


@dataclass
class World:
    urls: SignedURLs
    sync: CountingRedis
    aio: CountingAsyncRedis
    sessions: async_sessionmaker[AsyncSession]
    signer: FakeSigner
    prefix: str

    async def add(self, *keys: str) -> list[int]:
        async with self.sessions() as session:
            rows = [AFile(object_key=key) for key in keys]
            session.add_all(rows)
            await session.commit()
            return [row.id for row in rows]

    async def load(self, *ids: int) -> tuple[AsyncSession, list[AFile]]:
        session = self.sessions()
        rows = (await session.scalars(select(AFile).where(AFile.id.in_(ids)))).all()
        by_id = {row.id: row for row in rows}
        return session, [by_id[i] for i in ids]

    def stored(self, fid: int) -> bytes | None:
        value: bytes | None = self.sync._client.get(f"{self.prefix}{fid}")
        return value

    async def scheduled_writes_done(self) -> None:
        while self.urls._scheduled or (
            self.urls._flusher is not None and not self.urls._flusher.done()
        ):
            await asyncio.sleep(0.001)


@asynccontextmanager
async def world(tmp_path: Path, **options: Any) -> AsyncIterator[World]:
    """Everything a test needs, built inside the test's own event loop."""
    prefix = f"t{RUN_ID}:async:file_url:" if REDIS_URL else "file_url:"
    sync, aio = client_pair()
    async with async_database(tmp_path, ABase.metadata) as engine:
        signer = FakeSigner()
        options.setdefault("local_cache_size", 0)
        urls = SignedURLs(signer, redis=sync, async_redis=aio, key_prefix=prefix, **options)
        urls.install(AFile)
        try:
            yield World(
                urls, sync, aio, async_sessionmaker(engine, expire_on_commit=False), signer, prefix
            )
        finally:
            urls.uninstall()
            await urls.aclose()
            await close_pair(sync, aio, prefix)


def run(tmp_path: Path, body: Callable[[World], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with world(tmp_path, **options) as w:
            await body(w)

    asyncio.run(main())


# -- aresolve ------------------------------------------------------------------------------------


def test_aresolve_matches_resolve_with_one_mget_and_one_write(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        ids = await w.add(*(f"posts/{i}.png" for i in range(20)))
        session, files = await w.load(*ids)
        async with session:
            w.aio.reset()
            cold = await w.urls.aresolve(files)
            assert w.aio.commands == {"MGET": 1, "PIPELINE": 1}
            assert w.sync.round_trips == 0, "the sync client stays off the loop"
            w.aio.reset()
            warm = await w.urls.aresolve(files)
            assert w.aio.commands == {"MGET": 1}
            assert (
                cold
                == warm
                == [
                    f"https://files.test/posts/{i}.png?expires={w.urls.expires_at()}&sig=fake"
                    for i in range(20)
                ]
            )
            assert len(w.signer.calls) == 20
            assert decode_entry(w.stored(ids[0])) is not None
            assert w.urls.stats.hits == 20 and w.urls.stats.misses == 20

    run(tmp_path, body)


def test_aresolve_serves_the_in_process_layer_first(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        ids = await w.add("a.png", "b.png")
        session, files = await w.load(*ids)
        async with session:
            await w.urls.aresolve(files)  # starts the listener
            while not w.urls.channel.live:
                await asyncio.sleep(0.01)
            await w.urls.aresolve(files)  # into the L1
            w.aio.reset()
            assert len(await w.urls.aresolve(files)) == 2
            assert w.aio.round_trips == 0

    run(tmp_path, body, local_cache_size=100)


# -- awaitable_attrs and plain attributes in a coroutine ----------------------------------------


def test_awaitable_attrs_url_reads_redis_through_the_async_client(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        (fid,) = await w.add("a b.png")
        session, (file,) = await w.load(fid)
        async with session:
            first = await file.awaitable_attrs.url
            assert w.aio.commands == {"GET": 1, "PIPELINE": 1}
            w.aio.reset()
            assert await file.awaitable_attrs.url == first
            assert w.aio.commands == {"GET": 1}
            assert w.sync.round_trips == 0
            assert len(w.signer.calls) == 1

    run(tmp_path, body)


def test_plain_url_in_a_coroutine_does_no_network_io(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        (fid,) = await w.add("a.png")
        session, (file,) = await w.load(fid)
        async with session:
            w.aio.reset()
            w.sync.reset()
            url = file.url
            assert url == f"https://files.test/a.png?expires={w.urls.expires_at()}&sig=fake"
            assert (w.aio.round_trips, w.sync.round_trips) == (0, 0), "nothing awaited or sent"
            await w.scheduled_writes_done()
            assert w.aio.commands == {"PIPELINE": 1}, "the write went out on the loop"
            value = decode_entry(w.stored(fid))
            assert value is not None and value.url == url

    run(tmp_path, body)


def test_a_full_write_queue_drops_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "MAX_SCHEDULED_WRITES", 0)

    async def body(w: World) -> None:
        (fid,) = await w.add("a.png")
        session, (file,) = await w.load(fid)
        async with session:
            assert file.url is not None
            await asyncio.sleep(0)
            assert w.urls.stats.writes_dropped == 1
            assert w.stored(fid) is None

    run(tmp_path, body)


def test_outside_a_loop_plain_url_is_as_before(tmp_path: Path) -> None:
    async def prepare(w: World) -> None:
        ids = await w.add("a.png")
        session, (file,) = await w.load(*ids)
        await session.close()
        loop = asyncio.get_running_loop()
        # The same attribute read from a thread without a loop: one sync GET and a write.
        url = await loop.run_in_executor(None, lambda: file.url)
        assert url is not None
        assert w.sync.commands == {"GET": 1, "PIPELINE": 1}
        assert w.aio.round_trips == 0

    run(tmp_path, prepare)


# -- invalidation under AsyncSession -------------------------------------------------------------


def test_async_commit_invalidates_through_the_async_client(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        ids = await w.add("a.png", "b.png", "c.png")
        session, files = await w.load(*ids)
        async with session:
            await w.urls.aresolve(files)
            assert all(w.stored(i) for i in ids)
            files[0].object_key = "a2.png"
            await session.delete(files[1])
            w.aio.reset()
            w.sync.reset()
            await session.commit()
            assert w.stored(ids[0]) is None and w.stored(ids[1]) is None
            assert w.stored(ids[2]) is not None
            assert w.aio.commands == {"PIPELINE": 1, "PUBLISH": 1}
            assert w.sync.round_trips == 0

    run(tmp_path, body)


def test_async_rollback_and_nested_transactions_keep_the_cache(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        ids = await w.add("a.png", "b.png")
        session, files = await w.load(*ids)
        async with session:
            await w.urls.aresolve(files)
            files[0].object_key = "changed.png"
            await session.flush()
            await session.rollback()
            assert w.stored(ids[0]) is not None, "a rollback invalidates nothing"
            (file,) = (await session.scalars(select(AFile).where(AFile.id == ids[1]))).all()
            nested = await session.begin_nested()
            file.object_key = "nested.png"
            await nested.commit()
            assert w.stored(ids[1]) is not None, "only the outermost commit invalidates"
            await session.commit()
            assert w.stored(ids[1]) is None

    run(tmp_path, body)


def test_async_bulk_update_and_delete_invalidate(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        ids = await w.add("a.png", "b.png", "c.png")
        session, files = await w.load(*ids)
        async with session:
            await w.urls.aresolve(files)
            await session.execute(
                update(AFile).where(AFile.id == ids[0]).values(object_key="x.png")
            )
            await session.execute(delete(AFile).where(AFile.id == ids[1]))
            await session.commit()
        assert w.stored(ids[0]) is None and w.stored(ids[1]) is None
        assert w.stored(ids[2]) is not None

    run(tmp_path, body)
