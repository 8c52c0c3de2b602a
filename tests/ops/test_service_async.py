"""CacheService's awaitable twins (``aclear_file_url_cache``, ``awarm_file_url_cache``,
``aget_cache_stats``, ``arefresh_expired_urls``): on the same data each gives the result, the
signal and the log line of its sync twin, talks to Redis only through the async client, warms
by streaming rows from an ``AsyncSession``, never brings a deleted key back, and turns the async
client's faults into ``CacheError``.

One fakeredis server is shared by the sync and the async client and one SQLite file by the
sync and the aiosqlite engine; with ``REDIS_URL`` / ``DATABASE_URL`` set, a real Redis (per-run
key prefix) and PostgreSQL through psycopg and asyncpg (per-run schema) instead. Each test runs
its own event loop (``asyncio.run``) and closes its async clients and engines in it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import DateTime, Engine, String, create_engine, event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import CacheError, CacheService, ConfigurationError, ObjectKey, SignedURLs
from sqla_signed_urls.cache.base import decode_entry
from sqla_signed_urls.testing import CountingAsyncRedis, CountingRedis, FakeSigner

from ..conftest import DATABASE_URL, REDIS_URL, RUN_ID
from ..helpers.clients import client_pair, close_pair
from ..helpers.entries import fields, put_entry, raw_key
from .conftest import Signals


class SvcBase(DeclarativeBase):
    pass


class Doc(SvcBase):
    __tablename__ = "service_async_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    file_type: Mapped[str] = mapped_column(String(32), default="attachment")
    created_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


class CountingScanAsyncRedis(CountingAsyncRedis):
    """``CountingAsyncRedis`` whose ``scan_iter`` stays an async iterator (counted as SCAN)."""

    def scan_iter(self, *args: Any, **kwargs: Any) -> Any:
        self._count("scan")
        return self._client.scan_iter(*args, **kwargs)


@dataclass
class World:
    urls: SignedURLs
    sync: CountingRedis
    aio: CountingAsyncRedis
    sessions: sessionmaker[Session]
    asessions: async_sessionmaker[Any]
    signer: FakeSigner
    prefix: str
    services: list[CacheService] = field(default_factory=list)

    def service(self, **options: Any) -> CacheService:
        options.setdefault("session_factory", self.sessions)
        options.setdefault("async_session_factory", self.asessions)
        options.setdefault("model", Doc)
        return CacheService(self.urls, **options)

    def add(self, *rows: tuple[str | None, str, int]) -> list[int]:
        """rows: (object_key, file_type, minutes after T0); returns their ids."""
        with self.sessions() as session:
            docs = [
                Doc(object_key=k, file_type=t, created_at=T0 + dt.timedelta(minutes=m))
                for k, t, m in rows
            ]
            session.add_all(docs)
            session.commit()
            return [doc.id for doc in docs]

    def cached(self) -> dict[str, tuple[str, str]]:
        """Every URL entry under the prefix: key -> (signer tag, object key)."""
        out: dict[str, tuple[str, str]] = {}
        for raw in self.sync._client.scan_iter(match=self.prefix + "*"):
            key = raw.decode()
            if "#" in key:
                continue
            value = decode_entry(self.sync._client.get(key))
            assert value is not None
            out[key] = (value.tag, value.object_key)
        return out

    def indexed(self) -> set[str]:
        return {k.decode() for k in self.sync._client.zrange(f"{self.prefix}#expiry", 0, -1)}

    def wipe(self) -> None:
        """Remove every key under the prefix (URL entries, index and counters)."""
        keys = list(self.sync._client.scan_iter(match=self.prefix + "*"))
        if keys:
            self.sync._client.unlink(*keys)


def _engines(tmp_path: Path) -> tuple[Engine, AsyncEngine, str | None]:
    if not DATABASE_URL:
        path = tmp_path / "service.db"
        return (
            create_engine(f"sqlite:///{path}"),
            create_async_engine(f"sqlite+aiosqlite:///{path}"),
            None,
        )
    schema = f"t_asvc_{RUN_ID}"
    sync = create_engine(DATABASE_URL)

    @event.listens_for(sync, "connect")
    def _search_path(dbapi_conn: Any, _: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f'SET search_path TO "{schema}"')
        cur.close()

    url = DATABASE_URL.replace("+psycopg", "+asyncpg").replace(
        "postgresql://", "postgresql+asyncpg://"
    )
    aengine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    return sync, aengine, schema


@asynccontextmanager
async def world(tmp_path: Path, **options: Any) -> AsyncIterator[World]:
    """Everything a test needs, built inside the test's own event loop and closed in it."""
    prefix = f"t{RUN_ID}:asvc:file_url:" if REDIS_URL else "file_url:"
    sync, aio = client_pair(async_wrapper=CountingScanAsyncRedis)
    engine, aengine, schema = _engines(tmp_path)
    if schema is not None:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    SvcBase.metadata.drop_all(engine)
    SvcBase.metadata.create_all(engine)
    signer = FakeSigner()
    options.setdefault("local_cache_size", 0)
    urls = SignedURLs(signer, redis=sync, async_redis=aio, key_prefix=prefix, **options)
    urls.install(Doc)
    w = World(
        urls,
        sync,
        aio,
        sessionmaker(engine, expire_on_commit=False),
        async_sessionmaker(aengine, expire_on_commit=False),
        signer,
        prefix,
    )
    try:
        yield w
    finally:
        urls.uninstall()
        await urls.aclose()
        await aengine.dispose()
        SvcBase.metadata.drop_all(engine)
        if schema is not None:
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
        await close_pair(sync, aio, prefix)


def run(tmp_path: Path, body: Callable[[World], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with world(tmp_path, **options) as w:
            await body(w)

    asyncio.run(main())


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """The package's INFO log lines starting with a word (``"Cleared"``, ``"Warmed"``, ...)."""
    caplog.set_level(logging.INFO, logger="sqla_signed_urls")

    def starting(word: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(word)]

    return starting


# -- clear -------------------------------------------------------------------------------------


def test_aclear_gives_the_sync_result_signal_and_log_line(
    tmp_path: Path, sent: Signals, lines: Callable[[str], list[str]]
) -> None:
    async def body(w: World) -> None:
        ids = w.add(("a.png", "img", 1), ("b.png", "img", 2), ("c.png", "img", 3))
        service = w.service()
        service.warm_file_url_cache()
        one, every = f"{w.prefix}{ids[1]}", {f"{w.prefix}{i}" for i in ids}

        assert service.clear_file_url_cache(file_id=ids[1]) == 1
        after_sync = (set(w.cached()), w.indexed())
        service.warm_file_url_cache()
        w.sync.reset()
        w.aio.reset()
        assert await service.aclear_file_url_cache(file_id=ids[1]) == 1
        assert (set(w.cached()), w.indexed()) == after_sync == (every - {one}, every - {one})
        assert w.aio.commands["PIPELINE"] == 1 and w.aio.commands["PUBLISH"] == 1
        assert await service.aclear_file_url_cache(file_id=ids[1]) == 0

        assert service.clear_file_url_cache() == 2
        service.warm_file_url_cache()
        w.sync.reset()
        w.aio.reset()
        assert await service.aclear_file_url_cache() == 3
        assert w.cached() == {} and w.indexed() == set()
        assert w.aio.commands["SCAN"] == 1 and w.aio.commands["PUBLISH"] == 1
        assert not {"UNLINK", "SCAN_ITER", "MGET", "PUBLISH"} & set(w.sync.commands)

        cleared = [kwargs for sender, kwargs in sent.of("cache-cleared") if sender is service]
        assert cleared == [
            {"count": 1, "file_id": ids[1]},
            {"count": 1, "file_id": ids[1]},
            {"count": 0, "file_id": ids[1]},
            {"count": 2, "file_id": None},
            {"count": 3, "file_id": None},
        ]
        assert lines("Cleared") == [
            f"Cleared 1 cached URL(s) for file {ids[1]}",
            f"Cleared 1 cached URL(s) for file {ids[1]}",
            f"Cleared 0 cached URL(s) for file {ids[1]}",
            "Cleared 2 cached URL(s)",
            "Cleared 3 cached URL(s)",
        ]

    run(tmp_path, body)


def test_aclear_spares_other_data_in_the_same_db(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        other = w.prefix.replace("file_url:", "") + "session:abc"
        w.sync._client.set(other, b"keep me")
        try:
            w.add(("a.png", "img", 1))
            w.service().warm_file_url_cache()
            assert await w.service().aclear_file_url_cache() == 1
            assert w.sync._client.get(other) == b"keep me"
        finally:
            w.sync._client.delete(other)

    run(tmp_path, body)


# -- warm --------------------------------------------------------------------------------------


ROWS: list[tuple[str | None, str, int]] = [
    ("a", "avatar", 50),
    ("b", "post", 10),
    ("c", "avatar", 40),
    (None, "avatar", 45),
    ("", "avatar", 46),
    ("d", "avatar", 20),
    ("e", "post", 30),
]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"limit": 2},
        {"file_type": "avatar"},
        {"file_type": "avatar", "since": T0 + dt.timedelta(minutes=30), "limit": None},
        {"file_type": "none-such"},
    ],
)
def test_awarm_warms_what_warm_warms(
    tmp_path: Path, sent: Signals, lines: Callable[[str], list[str]], kwargs: dict[str, Any]
) -> None:
    async def body(w: World) -> None:
        w.add(*ROWS)
        service = w.service()

        warmed = service.warm_file_url_cache(**kwargs)
        by_sync, signed = w.cached(), sorted(k for k, _ in w.signer.calls)
        w.wipe()
        w.signer.calls.clear()
        assert await service.awarm_file_url_cache(**kwargs) == warmed
        assert w.cached() == by_sync
        assert sorted(k for k, _ in w.signer.calls) == signed
        # a second run finds them cached: counted as warm, nothing signed again
        assert await service.awarm_file_url_cache(**kwargs) == warmed
        assert sorted(k for k, _ in w.signer.calls) == signed

        file_type = kwargs.get("file_type")
        assert [kw for sender, kw in sent.of("cache-warmed") if sender is service] == [
            {"count": warmed, "file_type": file_type}
        ] * 3
        assert len(set(lines("Warmed"))) == 1 and len(lines("Warmed")) == 3

    run(tmp_path, body)


def test_awarm_streams_rows_in_batches_with_one_mget_and_one_write_each(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        w.add(*((f"k{i}", "img", i) for i in range(10)))
        service = w.service(batch_size=4)
        by_sync: list[int] = []
        assert service.warm_file_url_cache(limit=None, progress=by_sync.append) == 10
        w.wipe()
        w.sync.reset()
        w.aio.reset()
        seen: list[int] = []

        assert await service.awarm_file_url_cache(limit=None, progress=seen.append) == 10

        assert seen == by_sync == [4, 4, 2]
        assert w.aio.commands == {"MGET": 3, "PIPELINE": 3}
        assert "MGET" not in w.sync.commands  # the sync client stays off the loop
        assert len(w.cached()) == 10
        # a limit stops the stream where the sync warm stops it
        w.wipe()
        seen.clear()
        assert await service.awarm_file_url_cache(limit=6, progress=seen.append) == 6
        assert seen == [4, 2]
        assert set(w.cached()) == {f"{w.prefix}{i}" for i in range(5, 11)}

    run(tmp_path, body)


def test_awarm_needs_an_async_session_factory(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        service = CacheService(w.urls, session_factory=w.sessions, model=Doc)
        with pytest.raises(ConfigurationError, match="async_session_factory"):
            await service.awarm_file_url_cache()
        with pytest.raises(ConfigurationError, match="async_session_factory"):
            CacheService(w.urls, async_session_factory="nope")  # type: ignore[arg-type]

    run(tmp_path, body)


# -- stats -------------------------------------------------------------------------------------


def test_aget_cache_stats_gives_the_sync_stats(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        ids = w.add(("a", "img", 1), ("b", "img", 2), ("c", "img", 3))
        async with w.asessions() as session:
            docs = (await session.scalars(select(Doc).where(Doc.id.in_(ids)))).all()
            await w.urls.aresolve(docs)  # 3 misses, 3 signed
            await w.urls.aresolve(docs[:2])  # 2 hits
        for flushed in (False, True):
            if flushed:
                w.urls.flush_stats()
            service = w.service()
            w.sync.reset()
            w.aio.reset()

            stats = await service.aget_cache_stats()

            assert not {"HGETALL", "ZCOUNT", "INFO"} & set(w.sync.commands)
            assert w.aio.commands["HGETALL"] == 1 and w.aio.commands["ZCOUNT"] == 1
            expected = service.get_cache_stats()
            if REDIS_URL:  # the server's memory moves between two reads
                assert isinstance(stats.pop("memory_used_bytes"), int)
                expected.pop("memory_used_bytes")
            assert stats == expected
            assert (stats["hits"], stats["misses"], stats["signed"], stats["keys"]) == (2, 3, 3, 3)
            assert stats["hit_ratio"] == pytest.approx(0.4)
            assert stats["key_prefix"] == w.prefix

    run(tmp_path, body)


# -- refresh -----------------------------------------------------------------------------------


def _expiring_entries(w: World) -> dict[str, str]:
    """Entries about to end, one of each kind; returns key -> kind."""
    kinds = {
        f"{w.prefix}1": "resign",
        f"{w.prefix}2": "resign",
        f"{w.prefix}3": "extend",
        f"{w.prefix}4": "later",
        f"{w.prefix}5": "deleted",
    }
    put_entry(w.urls, f"{w.prefix}1", "a.png", cache_left=100)
    put_entry(w.urls, f"{w.prefix}2", "b.png", cache_left=500)
    put_entry(
        w.urls, f"{w.prefix}3", "c.png", cache_left=100, url_left=w.urls.settings.url_ttl - 60
    )
    put_entry(w.urls, f"{w.prefix}4", "d.png", cache_left=2000)
    put_entry(w.urls, f"{w.prefix}5", "e.png", cache_left=100)
    w.sync._client.delete(f"{w.prefix}5")  # gone (a commit, a clear) but still in the index
    return kinds


def _outcome(w: World, kinds: dict[str, str], before: dict[str, bytes | None]) -> dict[str, Any]:
    now = time.time()
    out: dict[str, Any] = {}
    for key in kinds:
        raw = raw_key(w.sync._client, key)
        if raw is None:
            out[key] = ("absent", w.sync._client.zscore(f"{w.prefix}#expiry", key))
            continue
        _, until, url = fields(raw)
        old_url = fields(before[key] or b"")[2]
        out[key] = (
            "same" if raw == before[key] else "renewed",
            until > now + 600,
            "old url" if url == old_url else "new url",
        )
    return out


def test_arefresh_renews_what_refresh_renews(
    tmp_path: Path, sent: Signals, lines: Callable[[str], list[str]]
) -> None:
    async def body(w: World) -> None:
        service = w.service(batch_size=2)
        kinds = _expiring_entries(w)
        before = {key: raw_key(w.sync._client, key) for key in kinds}
        renewed = service.refresh_expired_urls(within=600)
        by_sync, signed = _outcome(w, kinds, before), sorted(k for k, _ in w.signer.calls)
        w.wipe()
        w.signer.calls.clear()
        kinds = _expiring_entries(w)
        before = {key: raw_key(w.sync._client, key) for key in kinds}
        w.sync.reset()
        w.aio.reset()

        assert await service.arefresh_expired_urls(within=600) == renewed == 3

        assert _outcome(w, kinds, before) == by_sync
        assert by_sync == {
            f"{w.prefix}1": ("renewed", True, "new url"),
            f"{w.prefix}2": ("renewed", True, "new url"),
            f"{w.prefix}3": ("renewed", True, "old url"),
            f"{w.prefix}4": ("same", True, "old url"),  # ends later than the window
            f"{w.prefix}5": ("absent", None),  # not brought back, its index entry dropped
        }
        assert sorted(k for k, _ in w.signer.calls) == signed == ["a.png", "b.png"]
        assert not {"MGET", "ZRANGEBYSCORE"} & set(w.sync.commands)
        assert w.aio.commands["ZRANGEBYSCORE"] >= 1 and w.aio.commands["MGET"] >= 1
        assert [kw for sender, kw in sent.of("urls-refreshed") if sender is service] == [
            {"count": 3, "within": 600}
        ] * 2
        assert lines("Refreshed") == ["Refreshed 3 cached URL(s) expiring within 600 seconds"] * 2

    run(tmp_path, body)


class DeletingSigner(FakeSigner):
    """Deletes an entry while it is being re-signed: between refresh's read and its write."""

    def __init__(self, client: Any, delete: dict[str, str]) -> None:
        super().__init__()
        self.client = client
        self.delete = delete  # object key -> the cache key to delete when signing it

    def sign(self, object_key: str, *, expires_at: int) -> str:
        if object_key in self.delete:
            self.client.delete(self.delete[object_key])
        return super().sign(object_key, expires_at=expires_at)


def test_arefresh_never_resurrects_a_key_deleted_while_it_signs(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        key = f"{w.prefix}1"
        signer = DeletingSigner(w.sync._client, {"a.png": key})
        urls = SignedURLs(
            signer, redis=w.sync, async_redis=w.aio, key_prefix=w.prefix, local_cache_size=0
        )
        try:
            put_entry(urls, key, "a.png", cache_left=100)

            assert await CacheService(urls).arefresh_expired_urls(600) == 0

            assert signer.calls and raw_key(w.sync._client, key) is None
            assert w.sync._client.zscore(f"{w.prefix}#expiry", key) is None
        finally:
            await urls.aclose()

    run(tmp_path, body)


# -- faults and bad arguments --------------------------------------------------------------------


def test_async_operations_raise_cache_error_when_the_async_client_fails(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        w.add(("a.png", "img", 1))
        w.urls.uninstall()
        urls = SignedURLs(
            w.signer,
            redis=w.sync,
            async_redis="redis://127.0.0.1:1/0",  # nothing listens there
            key_prefix=w.prefix,
            local_cache_size=0,
        )
        urls.install(Doc)
        service = CacheService(urls, async_session_factory=w.asessions, model=Doc)
        try:
            calls: list[Callable[[], Awaitable[Any]]] = [
                service.aget_cache_stats,
                service.aclear_file_url_cache,
                lambda: service.aclear_file_url_cache(5),
                service.awarm_file_url_cache,
                service.arefresh_expired_urls,
            ]
            for call in calls:
                with pytest.raises(CacheError, match="Redis unavailable") as caught:
                    await call()
                assert isinstance(caught.value.__cause__, urls.async_store.errors)
        finally:
            urls.uninstall()
            await urls.aclose()
            w.urls.install(Doc)

    run(tmp_path, body)


BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("clear_file_url_cache", (True,), {}),
    ("clear_file_url_cache", (-1,), {}),
    ("clear_file_url_cache", (1.5,), {}),
    ("clear_file_url_cache", ("",), {}),
    ("warm_file_url_cache", (), {"limit": 0}),
    ("warm_file_url_cache", ("",), {}),
    ("warm_file_url_cache", (), {"since": "yesterday"}),
    ("refresh_expired_urls", (0,), {}),
    ("refresh_expired_urls", (True,), {}),
    ("refresh_expired_urls", (1.5,), {}),
]


@pytest.mark.parametrize(("name", "args", "kwargs"), BAD_CALLS)
def test_async_twins_refuse_what_the_sync_ones_refuse(
    tmp_path: Path, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    async def body(w: World) -> None:
        service = w.service()
        with pytest.raises((TypeError, ValueError)) as by_sync:
            getattr(service, name)(*args, **kwargs)
        w.aio.reset()
        with pytest.raises(type(by_sync.value)) as by_async:
            await getattr(service, "a" + name)(*args, **kwargs)
        assert str(by_async.value) == str(by_sync.value)
        assert w.aio.round_trips == 0

    run(tmp_path, body)
