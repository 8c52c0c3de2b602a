"""``urls.prefetch()`` under ``AsyncSession``: the page's one ``MGET`` is awaited on the
``redis.asyncio`` client (never a blocking call on the loop), streamed results prefetch per
partition, and the plain ``.url`` reads after it are in-process hits — on aiosqlite and
fakeredis, or asyncpg/PostgreSQL and Redis when ``DATABASE_URL`` / ``REDIS_URL`` are set."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.testing import CountingAsyncRedis, CountingRedis, FakeSigner

from ..conftest import REDIS_URL
from ..helpers.clients import async_database, client_pair, close_pair
from .test_prefetch import AUTHORS, POSTS, Author, Avatar, Image, PBase, Post, read_page


class KeyCountingAsync(CountingAsyncRedis):
    """Counts round trips and remembers how many keys each ``MGET`` asked for."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.mget_sizes: list[int] = []

    def reset(self) -> None:
        super().reset()
        self.mget_sizes.clear()

    async def mget(self, keys: Any, *args: Any) -> Any:
        self._count("mget")
        self.mget_sizes.append(len(keys))
        return await self._client.mget(keys, *args)


@dataclass
class World:
    urls: SignedURLs
    sync: CountingRedis
    aio: KeyCountingAsync
    sessions: async_sessionmaker[AsyncSession]


@asynccontextmanager
async def world(tmp_path: Path, prefetch: bool = False) -> AsyncIterator[World]:
    prefix = f"t{uuid.uuid4().hex[:8]}:pf:" if REDIS_URL else "file_url:"
    sync, aio = client_pair(this_thread_only=True, async_wrapper=KeyCountingAsync)
    assert isinstance(aio, KeyCountingAsync)
    async with async_database(tmp_path, PBase.metadata) as engine:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions() as session:
            for a in range(1, AUTHORS + 1):
                avatar = Avatar(object_key=f"avatars/{a}.png")
                session.add(Author(id=a, name=f"a{a}", avatar=avatar))
            for p in range(1, POSTS + 1):
                images = [Image(object_key=f"posts/{p}/{i}.png") for i in range(p % 4)]
                session.add(Post(id=p, author_id=(p % AUTHORS) + 1, images=images))
            await session.commit()
        urls = SignedURLs(FakeSigner(), redis=sync, async_redis=aio, key_prefix=prefix)
        urls.install(PBase, prefetch=prefetch)
        urls.channel.ensure_started()
        while not urls.channel.live:  # bounded by the listener's own connect timeout
            await asyncio.sleep(0.005)
        try:
            yield World(urls, sync, aio, sessions)
        finally:
            urls.uninstall()
            await urls.aclose()
            await close_pair(sync, aio, prefix)


def run(tmp_path: Path, body: Callable[[World], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with world(tmp_path, **options) as w:
            await body(w)

    asyncio.run(main())


def page_statement() -> Any:
    return select(Post).options(
        selectinload(Post.author).selectinload(Author.avatar), selectinload(Post.images)
    )


def test_an_async_page_is_one_awaited_mget_and_in_process_hits_after(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        async with w.sessions() as session:
            w.aio.reset()
            w.sync.reset()
            posts = list(await session.scalars(page_statement().options(w.urls.prefetch())))
            assert w.aio.commands == {"MGET": 1, "PIPELINE": 1}
            assert w.aio.mget_sizes == [AUTHORS + sum(p % 4 for p in range(POSTS + 1))]
            assert w.sync.round_trips == 0, "a blocking Redis call ran on the event loop"
            w.aio.reset()
            urls = read_page(posts)
            assert w.aio.round_trips == 0 and w.sync.round_trips == 0
            assert not w.urls._scheduled  # in-process hits: nothing signed, nothing to write
            assert all(url and url.startswith("https://files.test/") for url in urls)

    run(tmp_path, body)


def test_installed_for_every_select_under_async_session(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        async with w.sessions() as session:
            w.aio.reset()
            posts = list(await session.scalars(page_statement()))
            assert w.aio.commands["MGET"] == 1
            w.aio.reset()
            read_page(posts)
            assert w.aio.round_trips == 0

            w.urls.clear_local()
            w.aio.reset()
            stmt = page_statement().execution_options(prefetch_urls=False)
            posts = list(await session.scalars(stmt))
            assert w.aio.round_trips == 0

    run(tmp_path, body, prefetch=True)


def test_a_streamed_async_result_prefetches_each_partition(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        async with w.sessions() as session:
            w.aio.reset()
            stmt = select(Image).order_by(Image.id).options(w.urls.prefetch())
            stream = await session.stream_scalars(stmt.execution_options(yield_per=4))
            sizes: list[int] = []
            async for partition in stream.partitions():
                sizes.append(len(partition))
                assert w.aio.mget_sizes == sizes  # this partition's MGET came with it
                w.aio.reset()
                [image.url for image in partition]
                assert w.aio.round_trips == 0
                w.aio.mget_sizes.extend(sizes)
            assert sizes and max(sizes) == 4

    run(tmp_path, body)


def test_joined_eager_loads_are_prefetched_under_async_session(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        async with w.sessions() as session:
            w.aio.reset()
            stmt = select(Post).options(
                joinedload(Post.author).joinedload(Author.avatar),
                selectinload(Post.images),
                w.urls.prefetch(),
            )
            posts = list((await session.scalars(stmt)).unique())
            assert w.aio.commands["MGET"] == 1
            w.aio.reset()
            read_page(posts)
            assert w.aio.round_trips == 0

    run(tmp_path, body)


def test_an_error_inside_an_async_prefetch_never_reaches_the_query(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(w: World) -> None:
        async def broken(*args: Any) -> None:
            raise RuntimeError("boom")

        w.urls._aprefetch = broken  # type: ignore[method-assign]
        async with w.sessions() as session:
            with caplog.at_level(logging.WARNING, logger="sqla_signed_urls"):
                posts = list(await session.scalars(page_statement().options(w.urls.prefetch())))
            assert len(posts) == POSTS
            assert "Could not prefetch signed URLs (RuntimeError)" in caplog.text
            assert all(url for url in read_page(posts))  # the attributes read on their own

    run(tmp_path, body)
