"""The read path with its in-process layer (L1) on: models, helpers and fixtures.

Registered as a plugin from ``tests/conftest.py``, so the fixtures serve the read-path tests in
``tests/orm`` and the real-server ones in ``tests/servers`` alike. The models have bases of their
own, so other tests' models and tables are never touched; ``PeerBase`` maps the same table a
second time, standing for another process (or app) reading the same rows.

Round trips are counted on the caller's thread only: the background listener flushes counters
to Redis every second, and that must not blur "a hit makes no round trip".
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import fakeredis
import pytest
import redis as redis_py
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import ObjectKey, SignedURLs, core
from sqla_signed_urls.testing import CountingRedis, FakeSigner

from ..conftest import REDIS_URL, RUN_ID, wait_until

#: Upper bound for every wait on a background thread or a child process; nothing waits this
#: long when things work.
PATIENCE = 20.0


# -- models ------------------------------------------------------------------------------------


class FastBase(DeclarativeBase):
    pass


class Doc(FastBase):
    __tablename__ = "fp_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    if TYPE_CHECKING:
        url: str | None  # put there by SignedURLs.install()


class Photo(FastBase):
    __tablename__ = "fp_photos"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512, namespace="photo"))
    if TYPE_CHECKING:
        url: str | None


class PeerBase(DeclarativeBase):
    """A second mapping of ``fp_docs``: what another process (or app) sees of the same rows."""


class PeerDoc(PeerBase):
    __tablename__ = "fp_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    if TYPE_CHECKING:
        url: str | None


# -- helpers -----------------------------------------------------------------------------------


class CallerCounting(CountingRedis):
    """Counts round trips made by the thread that built it; records the size of every MGET."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.raw = client
        self.owner = threading.get_ident()
        self.mget_sizes: list[int] = []

    def _count(self, name: str) -> None:
        if threading.get_ident() == self.owner:
            super()._count(name)

    def mget(self, keys: Any, *args: Any) -> Any:
        if threading.get_ident() == self.owner:
            self.mget_sizes.append(len(keys) + len(args) if isinstance(keys, list) else 1)
        self._count("mget")
        return self.raw.mget(keys, *args)

    def reset(self) -> None:
        super().reset()
        self.mget_sizes.clear()


class Clock:
    """Stands in for ``time.time`` inside the core (``sqla_signed_urls.core._time``)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_live(urls: SignedURLs, obj: Any) -> None:
    """Read once (the first Redis access starts the listener) and wait until it subscribed:
    only then is the L1 read and filled."""
    _ = obj.url
    wait_until(lambda: urls.channel.live, "the invalidation listener subscribing")


def warm(urls: SignedURLs, *objs: Any) -> None:
    """Bring ``objs`` into the L1: listener up, then one read each (from Redis into the L1)."""
    wait_live(urls, objs[0])
    for obj in objs:
        _ = obj.url


def expires_in(url: str) -> int:
    """The expiry FakeSigner (``expires=``) or OSS V1 (``Expires=``) put into a URL."""
    query = parse_qs(urlsplit(url).query)
    return int((query.get("expires") or query["Expires"])[0])


def stored(raw: Any, key: str) -> tuple[int, int, str]:
    """``(expires_at, cache_until, text)`` of a stored value (readable text, never pickle)."""
    value = raw.get(key)
    assert value is not None, f"{key} is not in Redis"
    content = value.decode()
    expires_at, cache_until = content.split(" ")[:2]
    return int(expires_at), int(cache_until), content


def new_client() -> Any:
    """A raw client on the server the tests use (a fresh fakeredis server without REDIS_URL)."""
    if REDIS_URL:
        return redis_py.Redis.from_url(REDIS_URL)
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def unlink_prefix(raw: Any, prefix: str) -> None:
    keys = list(raw.scan_iter(match=prefix + "*"))
    if keys:
        raw.unlink(*keys)


def add(sessions: sessionmaker[Session], cls: type[Any], *keys: str | None) -> list[int]:
    with sessions() as session:
        rows = [cls(object_key=key) for key in keys]
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


def load(session: Session, cls: type[Any]) -> list[Any]:
    return list(session.scalars(select(cls).order_by(cls.id)))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """A key prefix (and so a pub/sub channel) of this test's own."""
    return f"fp{RUN_ID}{uuid.uuid4().hex[:6]}:file_url:" if REDIS_URL else "file_url:"


@pytest.fixture
def client(prefix: str) -> Iterator[CallerCounting]:
    counting = CallerCounting(new_client())
    yield counting
    if REDIS_URL:
        unlink_prefix(counting.raw, prefix)
        counting.raw.close()


@pytest.fixture
def make(client: CallerCounting, prefix: str) -> Iterator[Callable[..., SignedURLs]]:
    """Build a ``SignedURLs`` (L1 on) installed on ``base``; uninstalled and closed afterwards."""
    made: list[SignedURLs] = []

    def build(
        signer: Any = None, *, base: Any = FastBase, redis: Any = None, **kwargs: Any
    ) -> SignedURLs:
        kwargs.setdefault("key_prefix", prefix)
        kwargs.setdefault("local_cache_size", 1000)
        urls = SignedURLs(
            signer if signer is not None else FakeSigner(),
            redis=client if redis is None else redis,
            **kwargs,
        )
        made.append(urls)
        if base is not None:
            urls.install(base)
        return urls

    yield build
    for urls in made:
        urls.uninstall()
        urls.close()  # flushes counters to <prefix>#stats: clean up only after this
    if REDIS_URL:
        cleaner = redis_py.Redis.from_url(REDIS_URL)
        for key_prefix in {urls.settings.key_prefix for urls in made}:
            unlink_prefix(cleaner, key_prefix)
        cleaner.close()


@pytest.fixture
def sessions(engine: Engine) -> Iterator[sessionmaker[Session]]:
    FastBase.metadata.create_all(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    FastBase.metadata.drop_all(engine)


@pytest.fixture
def open_session(sessions: sessionmaker[Session]) -> Iterator[Callable[[], Session]]:
    """Sessions closed by the test's own thread at the end: a session left to the garbage
    collector may be finalized on the listener thread, which SQLite's in-memory database
    (one connection, StaticPool) does not allow."""
    opened: list[Session] = []

    def open_one() -> Session:
        opened.append(sessions())
        return opened[-1]

    yield open_one
    for session in opened:
        session.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(float(int(time.time())))
    monkeypatch.setattr(core, "_time", fake)
    monkeypatch.setattr("sqla_signed_urls.cache.guard._time", fake)
    return fake
