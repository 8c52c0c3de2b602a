"""Fixtures: SQLite + fakeredis by default; PostgreSQL and real Redis from DATABASE_URL/REDIS_URL.

Tests that need a real server skip with a reason when its URL is not set, and fail instead when
``SQLA_SIGNED_URLS_REQUIRE_SERVERS=1`` (CI). Every run uses its own key prefix (Redis) and
schema (PostgreSQL), so runs never see each other's data.

The tests are grouped by what they test: ``unit`` (settings, signers, keys, extras, the signer
and store contracts, log hygiene), ``orm`` (the URL attribute, install, invalidation,
``resolve()``, the in-process layer, races), ``ops`` (CacheService, the command line, Flask,
metrics, the demo, alembic, the example app) and ``servers`` (behaviour against real servers,
with server processes as fixtures). Fixtures shared by several folders are here and in
``tests/helpers/read_path.py`` (the read path with its in-process layer on); the others are in
each folder's ``conftest.py``.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from sqlalchemy import Engine, String, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import ObjectKey, SignedURLs
from sqla_signed_urls.testing import CountingRedis, FakeSigner

pytest_plugins = ["tests.log_hygiene_plugin", "tests.helpers.read_path"]
pytest.register_assert_rewrite("tests.helpers", "tests.servers._processes")

RUN_ID = uuid.uuid4().hex[:8]
REDIS_URL = os.environ.get("REDIS_URL") or None
DATABASE_URL = os.environ.get("DATABASE_URL") or None
REQUIRE_SERVERS = os.environ.get("SQLA_SIGNED_URLS_REQUIRE_SERVERS") == "1"


def need_server(name: str, value: str | None) -> str:
    """Return the server URL, or skip (laptop) / fail (CI) when it is not configured."""
    if value:
        return value
    reason = f"needs a real server: set {name}"
    if REQUIRE_SERVERS:
        pytest.fail(f"{reason} (SQLA_SIGNED_URLS_REQUIRE_SERVERS=1 turns this skip into a failure)")
    pytest.skip(reason)


@pytest.fixture
def real_redis_url() -> str:
    return need_server("REDIS_URL", REDIS_URL)


@pytest.fixture
def real_database_url() -> str:
    return need_server("DATABASE_URL", DATABASE_URL)


@pytest.fixture
def key_prefix() -> str:
    """``file_url:`` on fakeredis (the usual key layout); a per-run prefix on a shared server."""
    return f"t{RUN_ID}:file_url:" if REDIS_URL else "file_url:"


@pytest.fixture
def redis_client(key_prefix: str) -> Iterator[Any]:
    """A Redis client counting its round trips; keys under the prefix are removed afterwards."""
    if REDIS_URL:
        import redis

        raw = redis.Redis.from_url(REDIS_URL)
    else:
        raw = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    client = CountingRedis(raw)
    yield client
    if REDIS_URL:
        keys = list(raw.scan_iter(match=key_prefix + "*"))
        if keys:
            raw.unlink(*keys)
        raw.close()


@pytest.fixture
def signer() -> FakeSigner:
    return FakeSigner()


class Base(DeclarativeBase):
    pass


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    file_type: Mapped[str] = mapped_column(String(32), default="attachment")


@pytest.fixture
def engine() -> Iterator[Engine]:
    if DATABASE_URL:
        schema = f"t_{RUN_ID}"
        admin = create_engine(DATABASE_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        eng = create_engine(DATABASE_URL)

        @event.listens_for(eng, "connect")
        def _search_path(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f'SET search_path TO "{schema}"')
            cur.close()

        yield eng
        eng.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    else:
        eng = create_engine("sqlite://", poolclass=_static_pool())
        yield eng
        eng.dispose()


def _static_pool() -> Any:
    from sqlalchemy.pool import StaticPool

    return StaticPool


@pytest.fixture
def make_urls(redis_client: Any, signer: FakeSigner, key_prefix: str) -> Iterator[Any]:
    """Factory for installed ``SignedURLs``; uninstalls and closes them after the test."""
    made: list[SignedURLs] = []

    def make(**kwargs: Any) -> SignedURLs:
        kwargs.setdefault("redis", redis_client)
        kwargs.setdefault("key_prefix", key_prefix)
        kwargs.setdefault("signer", signer)
        urls = SignedURLs(**kwargs)
        made.append(urls)
        return urls

    yield make
    for urls in made:
        urls.uninstall()
        urls.close()


@pytest.fixture
def urls(make_urls: Any) -> SignedURLs:
    """SignedURLs installed on the test ``Base`` (in-process layer off unless a test asks)."""
    u: SignedURLs = make_urls(local_cache_size=0)
    u.install(Base)
    return u


@pytest.fixture
def db(engine: Engine) -> Iterator[sessionmaker[Session]]:
    Base.metadata.create_all(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    Base.metadata.drop_all(engine)


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="sqla_signed_urls")
    return caplog


def wait_until(predicate: Callable[[], bool], what: str, limit: float = 30.0) -> float:
    """Poll for something another thread, process or the server does; return how long it took.
    The limit only guards against hanging: it fails the test, it never times a behaviour."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            pytest.fail(f"timed out after {limit:g} s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - start


def add_files(
    db: sessionmaker[Session], *keys: str | None, file_type: str = "attachment"
) -> list[int]:
    """Insert one ``File`` row per object key; return their ids."""
    with db() as session:
        files = [File(object_key=key, file_type=file_type) for key in keys]
        session.add_all(files)
        session.commit()
        return [f.id for f in files]


def cache_files(urls: SignedURLs, db: sessionmaker[Session], ids: list[int]) -> list[str | None]:
    """Resolve the rows' URLs, which caches them."""
    with db() as session:
        return urls.resolve([session.get(File, i) for i in ids])


def load_file(db: sessionmaker[Session], file_id: int) -> File:
    """One ``File`` row, loaded in a session of its own (closed again)."""
    with db() as session:
        file = session.get(File, file_id)
        assert file is not None
        return file
