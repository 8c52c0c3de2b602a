"""Other processes, async: a commit through an ``AsyncSession`` in this process drops the L1
entry of a child process that serves its URLs with ``aresolve()`` on its own event loop.

Real Redis (``REDIS_URL`` or a throwaway ``redis-server``) and a shared SQLite file (aiosqlite),
or PostgreSQL (asyncpg, a schema of its own) when ``DATABASE_URL`` is set. The child reports in
JSON lines; every wait on either side has a deadline that only guards against hanging.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import redis as redis_py
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_signed_urls import ObjectKey, SignedURLs
from sqla_signed_urls.testing import FakeSigner

from ..conftest import DATABASE_URL, RUN_ID
from ..helpers.read_path import unlink_prefix
from .test_cross_process import Child

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time

    import redis.asyncio
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncAttrs, async_sessionmaker, create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    from sqla_signed_urls import ObjectKey, SignedURLs
    from sqla_signed_urls.testing import CountingAsyncRedis, FakeSigner

    redis_url, prefix, db_url, connect_args = sys.argv[1:5]

    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class ADoc(Base):
        __tablename__ = "async_xp_docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        object_key: Mapped[str | None] = mapped_column(ObjectKey(512))

    def say(**fields):
        print(json.dumps(fields), flush=True)

    async def wait_until(condition, what):
        deadline = time.monotonic() + 20
        while not await condition():
            if time.monotonic() > deadline:
                say(word="timeout", what=what)
                sys.exit(1)
            await asyncio.sleep(0.005)

    async def main():
        aio = CountingAsyncRedis(redis.asyncio.Redis.from_url(redis_url))
        urls = SignedURLs(FakeSigner(), redis=redis_url, async_redis=aio, key_prefix=prefix,
                          local_cache_size=100)
        urls.install(Base)
        engine = create_async_engine(db_url, connect_args=json.loads(connect_args))
        session = async_sessionmaker(engine, expire_on_commit=False)()
        rows = (await session.scalars(select(ADoc).order_by(ADoc.id))).all()
        first, second = rows
        await urls.aresolve(rows)

        async def live():
            return urls.channel.live

        await wait_until(live, "listener")
        await urls.aresolve(rows)  # into the L1
        aio.reset()
        for _ in range(10):
            await urls.aresolve(rows)
        say(word="ready", round_trips=aio.round_trips, live=urls.channel.live)

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # the parent has committed
        started = time.monotonic()

        async def dropped():
            aio.reset()
            await urls.aresolve([first])  # loaded before the commit: only the L1 answers free
            return aio.round_trips > 0

        await wait_until(dropped, "invalidation")
        waited = time.monotonic() - started
        aio.reset()
        await urls.aresolve([second])
        second_trips = aio.round_trips
        await session.refresh(first)
        (fresh,) = await urls.aresolve([first])
        say(word="dropped", waited=round(waited, 4), second_trips=second_trips, fresh=fresh)
        await session.close()
        urls.uninstall()
        await urls.aclose()
        await aio._client.aclose()
        await engine.dispose()

    asyncio.run(main())
    """
)


class AsyncChild(Child):
    """:class:`Child` (one line at a time, every read bounded) running the asyncio program."""

    def __init__(self, stderr: Path, *args: str) -> None:
        self.stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._pump = threading.Thread(target=self._read_stdout, daemon=True)
        self._pump.start()

    def report(self) -> dict[str, Any]:
        fields: dict[str, Any] = json.loads(" ".join(self.read()))
        return fields


class XBase(AsyncAttrs, DeclarativeBase):
    pass


class XDoc(XBase):
    __tablename__ = "async_xp_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


def _database(tmp_path: Path) -> tuple[str, dict[str, Any], str | None]:
    """URL, connect_args and schema (PostgreSQL only) shared by both processes."""
    if DATABASE_URL:
        url = DATABASE_URL.replace("+psycopg", "+asyncpg").replace(
            "postgresql://", "postgresql+asyncpg://"
        )
        schema = f"t_axp_{RUN_ID}"
        return url, {"server_settings": {"search_path": schema}}, schema
    return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}", {}, None


def test_async_commit_in_one_process_drops_the_l1_entry_in_another(
    redis_url_or_server: str, tmp_path: Path
) -> None:
    prefix = f"axp{RUN_ID}{uuid.uuid4().hex[:6]}:file_url:"
    db_url, connect_args, schema = _database(tmp_path)
    child: AsyncChild | None = None

    async def setup() -> None:
        engine = create_async_engine(db_url, connect_args=connect_args)
        async with engine.begin() as conn:
            if schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await conn.run_sync(XBase.metadata.drop_all)
            await conn.run_sync(XBase.metadata.create_all)
            await conn.execute(
                text(
                    "INSERT INTO async_xp_docs (id, object_key) VALUES (1, 'old.png'), (2, 'b.png')"
                )
            )
        await engine.dispose()

    async def commit() -> None:
        engine = create_async_engine(db_url, connect_args=connect_args)
        urls = SignedURLs(
            FakeSigner(), redis=redis_url_or_server, key_prefix=prefix, local_cache_size=0
        )
        urls.install(XBase)
        try:
            async with AsyncSession(engine) as session:
                doc = await session.get(XDoc, 1)
                assert doc is not None
                doc.object_key = "new.png"
                await session.commit()  # this process publishes through its async client
            assert urls.stats.invalidations == 1
            assert urls.redis_available
        finally:
            urls.uninstall()
            await urls.aclose()
            await engine.dispose()

    async def teardown() -> None:
        engine = create_async_engine(db_url, connect_args=connect_args)
        async with engine.begin() as conn:
            await conn.run_sync(XBase.metadata.drop_all)
            if schema:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()

    asyncio.run(setup())
    try:
        child = AsyncChild(
            tmp_path / "child.err", redis_url_or_server, prefix, db_url, json.dumps(connect_args)
        )
        ready = child.report()
        assert ready == {"word": "ready", "round_trips": 0, "live": True}, ready

        asyncio.run(commit())
        child.send("go")
        report = child.report()
        assert report["word"] == "dropped", report
        assert report["second_trips"] == 0, "the other entry stayed in the child's L1"
        assert "new.png" in report["fresh"]
        assert child.close() == 0, (tmp_path / "child.err").read_text()
        print(f"async child dropped its L1 entry {report['waited'] * 1000:.1f} ms after 'go'")
    finally:
        if child is not None:
            child.close(kill=True)
        asyncio.run(teardown())
        with redis_py.Redis.from_url(redis_url_or_server, socket_timeout=5) as raw:
            unlink_prefix(raw, prefix)
