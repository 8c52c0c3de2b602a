"""Async faults: the event loop never stalls on Redis trouble.

A ticker task wakes every 10 ms and records the gaps between its wake-ups while 200 concurrent
requests read URLs every async way the library offers (a plain ``obj.url`` in a coroutine,
``await urls.aresolve(page)``, ``await obj.awaitable_attrs.url``) and commit changes through an
``AsyncSession``, against a silent Redis (accepts, never answers), a refused port, and a real
``redis-server`` killed mid-traffic. Every request must get its URLs, the breaker must open once,
and caching must resume when a real Redis listens again.

The one wall-clock assertion here is the loop's: a stalled event loop is the fault under test
(an ``await`` that blocks the loop for a ``socket_timeout`` would show as a 250 ms gap), so the
largest ticker gap is asserted, with a bound of 50 ms, five times the tick. The ticker stops by
itself when the requests are done (and after ``MAX_TICKS`` at most).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_signed_urls import ObjectKey, SignedURLs
from sqla_signed_urls.testing import FakeSigner

from ._processes import RedisServer, SilentServer, free_port

ROWS = 60
PAGE = 20
REQUESTS = 200
#: Requests in flight at once (the rest wait on a semaphore): all 200 are gathered together.
#: Ten keep the test's own CPU work per loop iteration (ORM queries and result rows of every
#: request in flight, all woken together when a timeout ends) well under the gap bound on a
#: loaded 2-core machine (25-34 ms with a CPU hog beside it); twenty reached 50 ms there.
IN_FLIGHT = 10
TICK = 0.01
#: The largest gap between two ticker wake-ups the loop may show: five ticks.
MAX_GAP = 0.05
#: The ticker stops after this many ticks even if the requests hang (a bound, never reached).
MAX_TICKS = 6000
SOCKET_TIMEOUT = 0.25
RETRY_AFTER = 0.5
#: Deadline of the recovery wait: it only guards against hanging.
PATIENCE = 30.0


class AFaultBase(AsyncAttrs, DeclarativeBase):
    pass


class AFaultFile(AFaultBase):
    __tablename__ = "async_fault_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


def key_of(url: str | None) -> str:
    """The object key a FakeSigner URL points at."""
    assert url is not None, "a request got no URL"
    parts = urlsplit(url)
    assert parts.netloc == "files.test" and parts.query.endswith("&sig=fake"), url
    return unquote(parts.path[1:])


@dataclass
class Ticker:
    """Wakes every ``TICK`` and records how long each wait really took."""

    gaps: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        last = time.monotonic()
        for _ in range(MAX_TICKS):
            if self.stop.is_set():
                return
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self.gaps.append(now - last)
            last = now

    @property
    def largest(self) -> float:
        return max(self.gaps, default=0.0)


class Storm:
    """An app on aiosqlite with one ``SignedURLs``, and the 200 requests it serves."""

    def __init__(self, db_path: Path, redis_url: str, *, plain_pages: bool = False) -> None:
        #: Whether the plain-``obj.url`` requests read a page of 20 (else one row).
        self.plain_pages = plain_pages
        self.engine = create_async_engine(
            f"sqlite+aiosqlite:///{db_path}", pool_size=10, max_overflow=10
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.urls = SignedURLs(
            FakeSigner(),
            redis=redis_url,
            socket_timeout=SOCKET_TIMEOUT,
            retry_after=RETRY_AFTER,
        )
        self.version = 0
        # SQLite takes one writer at a time: commits queue here, not on "database is locked".
        self.writer = asyncio.Lock()

    async def create(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(AFaultBase.metadata.create_all)
        async with self.sessions() as session:
            session.add_all(
                AFaultFile(id=i, object_key=f"files/{i}.png") for i in range(1, ROWS + 1)
            )
            await session.commit()
        # The SQL of every request kind once before the URLs are installed, so that the
        # statement compilation and the first connections are not in the measured window.
        async with self.sessions() as session:
            await self.page(session, 0)
            file = await session.get(AFaultFile, 1)
            assert file is not None
            file.object_key = "files/1.png "
            await session.commit()
            file.object_key = "files/1.png"
            await session.commit()
        self.urls.install(AFaultBase)

    async def close(self) -> None:
        self.urls.uninstall()
        await self.urls.aclose()
        await self.engine.dispose()

    async def page(self, session: AsyncSession, n: int) -> list[AFaultFile]:
        start = 1 + (n * 7) % (ROWS - PAGE)
        stmt = select(AFaultFile).where(AFaultFile.id.between(start, start + PAGE - 1))
        return list((await session.scalars(stmt.order_by(AFaultFile.id))).all())

    async def request(self, n: int) -> int:
        """One request of four kinds; returns how many URLs it checked."""
        async with self.sessions() as session:
            kind = n % 4
            if kind == 0:  # plain attribute reads in a coroutine: no network I/O
                if self.plain_pages:
                    files = await self.page(session, n)
                else:
                    file = await session.get(AFaultFile, 1 + n % ROWS)
                    assert file is not None
                    files = [file]
                got = [(f.object_key, f.url) for f in files]
            elif kind == 1:  # a page: one awaited MGET
                files = await self.page(session, n)
                got = list(
                    zip([f.object_key for f in files], await self.urls.aresolve(files), strict=True)
                )
            elif kind == 2:  # AsyncAttrs: one awaited GET
                file = await session.get(AFaultFile, 1 + n % ROWS)
                assert file is not None
                got = [(file.object_key, await file.awaitable_attrs.url)]
            else:  # a commit that changes a row: invalidation through the async client
                async with self.writer:
                    file = await session.get(AFaultFile, 1 + n % ROWS)
                    assert file is not None
                    self.version += 1
                    file.object_key = f"files/{file.id}-v{self.version}.png"
                    await session.commit()
                got = [
                    (file.object_key, await file.awaitable_attrs.url),
                    (file.object_key, file.url),
                ]
            for object_key, url in got:
                assert key_of(url) == object_key
            return len(got)

    async def serve(self) -> tuple[Ticker, list[Any]]:
        """The 200 requests at once (``IN_FLIGHT`` running), with the ticker beside them."""
        # What the whole test session left on the heap is not this test's to collect: a full
        # collection of it (a hundred ms and more after the rest of the suite) would read as a
        # stall. Collected now, before the ticker starts, and kept out of later collections.
        gc.collect()
        gc.freeze()
        ticker = Ticker()
        ticking = asyncio.create_task(ticker.run())
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def bounded(n: int) -> int:
            async with gate:
                return await self.request(n)

        await asyncio.sleep(TICK * 3)  # the ticker's first gaps are on an idle loop
        try:
            results = await asyncio.gather(
                *(bounded(n) for n in range(REQUESTS)), return_exceptions=True
            )
        finally:
            gc.unfreeze()
            ticker.stop.set()
            await ticking
        return ticker, results

    async def cached_again(self, check: redis.Redis) -> float:
        """Read (awaited paths) until Redis holds a value again; seconds it took."""
        started = time.monotonic()
        while True:
            async with self.sessions() as session:
                files = await self.page(session, 0)
                await self.urls.aresolve(files)
                stored = check.exists(*[f"file_url:{f.id}" for f in files])
            if self.urls.redis_available and stored:
                return time.monotonic() - started
            assert time.monotonic() - started < PATIENCE, "caching did not resume"
            await asyncio.sleep(0.02)


def assert_served(storm: Storm, ticker: Ticker, results: list[Any], fault: str) -> None:
    raised = [r for r in results if isinstance(r, BaseException)]
    assert raised == [], f"{len(raised)} of {REQUESTS} requests raised, e.g. {raised[0]!r}"
    assert all(isinstance(r, int) and r > 0 for r in results)
    assert ticker.largest < MAX_GAP, (
        f"the event loop stalled for {ticker.largest * 1000:.0f} ms (ticker every "
        f"{TICK * 1000:.0f} ms, limit {MAX_GAP * 1000:.0f} ms) with Redis {fault}"
    )
    assert storm.urls.stats.errors >= 1
    assert storm.urls.stats.breaker_opened == 1
    assert not storm.urls.redis_available


def run(body: Callable[[], Any]) -> Any:
    return asyncio.run(body())


@pytest.mark.parametrize(
    "plain_pages",
    [
        False,
        True,
    ],
    ids=["plain-single-rows", "plain-pages"],
)
def test_silent_server_never_stalls_the_loop(
    tmp_path: Path, silent_server: SilentServer, plain_pages: bool
) -> None:
    async def body() -> None:
        storm = Storm(tmp_path / "silent.db", silent_server.url(), plain_pages=plain_pages)
        try:
            await storm.create()
            ticker, results = await storm.serve()
            assert_served(storm, ticker, results, "silent")
            assert silent_server.received > 0, "the client never reached the silent server"
        finally:
            await storm.close()

    run(body)


def test_refused_port_never_stalls_the_loop_and_caching_resumes(
    tmp_path: Path, redis_server_factory: Callable[..., RedisServer]
) -> None:
    port = free_port()

    async def body() -> None:
        storm = Storm(tmp_path / "refused.db", f"redis://127.0.0.1:{port}/0")
        try:
            await storm.create()
            ticker, results = await storm.serve()
            assert_served(storm, ticker, results, "refusing connections")

            server = redis_server_factory("late", port=port)  # now something listens there
            with redis.Redis(port=server.port, socket_timeout=5) as check:
                await storm.cached_again(check)
            assert storm.urls.redis_available
            assert storm.urls.stats.breaker_opened == 1
        finally:
            await storm.close()

    run(body)


def test_killed_mid_traffic_never_stalls_the_loop_and_caching_resumes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def body() -> None:
        storm = Storm(tmp_path / "killed.db", redis_server.url())
        try:
            await storm.create()
            with redis.Redis(port=redis_server.port, socket_timeout=5) as check:
                await storm.cached_again(check)  # caching works before the outage
                assert storm.urls.stats.breaker_opened == 0
                redis_server.kill()
                ticker, results = await storm.serve()
                assert_served(storm, ticker, results, "killed")

                redis_server.start()  # same port, empty
                await storm.cached_again(check)
            assert storm.urls.redis_available
            assert storm.urls.stats.breaker_opened == 1
        finally:
            await storm.close()

    run(body)
