"""Issue 3 (fast path) through the public API: the in-process layer (L1), invalidation across
processes, ``resolve()``, stable URLs, single-flight and jitter, and a hit path that stays cheap.

Round trips are counted on the caller's thread only: the background listener flushes counters
to Redis every second, and that must not blur "a hit makes no round trip".
"""

from __future__ import annotations

import queue
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import fakeredis
import oss2
import pytest
import redis as redis_py
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import ObjectKey, SignedURLs, core, signals
from sqla_signed_urls.cache.redis import client_from_url
from sqla_signed_urls.signers import OSSSigner
from sqla_signed_urls.testing import CountingRedis, FakeSigner

from .conftest import REDIS_URL, RUN_ID, wait_until

#: Upper bound for every wait on a background thread or a child process; nothing waits this
#: long when things work.
PATIENCE = 20.0


# -- models: our own bases, so other tests' models and tables are never touched ---------------


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


# -- helpers ------------------------------------------------------------------------------------


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
    wait_until(lambda: urls._local_live, "the invalidation listener subscribing")


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


# -- fixtures -----------------------------------------------------------------------------------


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
    return fake


def add(sessions: sessionmaker[Session], cls: type[Any], *keys: str | None) -> list[int]:
    with sessions() as session:
        rows = [cls(object_key=key) for key in keys]
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


def load(session: Session, cls: type[Any]) -> list[Any]:
    return list(session.scalars(select(cls).order_by(cls.id)))


# == 1. the in-process layer (L1) ===============================================================


def test_l1_hit_makes_no_round_trip(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
) -> None:
    signer = FakeSigner()
    urls = make(signer)
    add(sessions, Doc, "a.png")
    [doc] = load(open_session(), Doc)
    warm(urls, doc)
    first = doc.url

    client.reset()
    assert all(doc.url == first for _ in range(100))
    assert urls.url_for(doc) == first
    assert client.round_trips == 0
    assert len(signer.calls) == 1


def test_l1_is_a_bounded_lru(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
) -> None:
    urls = make(local_cache_size=3)
    add(sessions, Doc, *(f"{i}.png" for i in range(5)))
    docs = load(open_session(), Doc)
    warm(urls, *docs)  # the L1 keeps the 3 most recent: docs 2, 3, 4

    def trips(doc: Any) -> int:
        client.reset()
        _ = doc.url
        return client.round_trips

    assert [trips(d) for d in docs[2:]] == [0, 0, 0]
    assert trips(docs[2]) == 0  # 2 is now the most recent; 3 the least
    assert trips(docs[0]) == 1  # evicted earlier; read back in, evicting 3
    assert trips(docs[2]) == 0
    assert trips(docs[4]) == 0
    assert trips(docs[3]) == 1
    assert urls._local is not None and len(urls._local) <= 3


def test_l1_entry_ends_with_its_redis_lifetime(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
    clock: Clock,
) -> None:
    signer = FakeSigner()
    urls = make(signer)
    add(sessions, Doc, "a.png")
    [doc] = load(open_session(), Doc)
    warm(urls, doc)
    [key] = [urls.cache_key(doc)]
    _, cache_until, _ = stored(client.raw, key)
    assert len(signer.calls) == 1

    clock.now = cache_until - 1
    client.reset()
    _ = doc.url
    assert client.round_trips == 0  # still within the lifetime: served by the L1

    clock.now = cache_until
    client.reset()
    url = doc.url
    assert client.round_trips >= 1  # the L1 let it go ...
    assert len(signer.calls) == 2  # ... and so did Redis: signed afresh
    assert expires_in(url) - clock.now >= urls.settings.min_validity


def test_l1_never_serves_past_the_min_validity_rule(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
    clock: Clock,
) -> None:
    """Another process with other settings wrote the Redis entry (a rolling config change):
    its cache lifetime outlasts this process's minimum validity. The L1 must apply this
    process's rule, as the Redis read does."""
    make(base=PeerBase, local_cache_size=0, url_window=1, ttl_jitter=0.0)  # the writer
    signer = FakeSigner()
    urls = make(signer, cache_ttl=1000, url_ttl=14400, url_window=1, ttl_jitter=0.0)
    add(sessions, Doc, "a.png")
    [peer] = load(open_session(), PeerDoc)
    [doc] = load(open_session(), Doc)
    t0 = clock.now
    written = peer.url  # expires t0 + 14400, cached until t0 + 2700 by the writer's rules
    assert expires_in(written) == t0 + 14400
    warm(urls, doc)
    assert doc.url == written and signer.calls == []

    clock.now = t0 + 1001  # 13399 s of validity left: less than 14400 - 1000
    url = doc.url
    assert expires_in(url) - clock.now >= urls.settings.min_validity, (
        "the L1 served a URL with less than url_ttl - cache_ttl validity left"
    )
    assert len(signer.calls) == 1


def test_l1_applies_the_fingerprint_rule(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
) -> None:
    signer = FakeSigner()
    urls = make(signer)
    [doc_id] = add(sessions, Doc, "old.png")
    [doc] = load(open_session(), Doc)
    warm(urls, doc)
    assert "old.png" in doc.url

    with sessions() as session:  # behind the ORM's back: no invalidation at all
        session.execute(
            text("UPDATE fp_docs SET object_key = 'new.png' WHERE id = :id"), {"id": doc_id}
        )
        session.commit()
    fresh = open_session().get(Doc, doc_id)
    assert fresh is not None
    url = fresh.url
    assert url is not None and "new.png" in url
    assert signer.calls[-1][0] == "new.png"


def test_l1_is_filled_only_alongside_redis(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the circuit breaker skips Redis, a signed URL has no Redis entry, so the L1 must
    not keep it either: once Redis is back, reads go there and fill it again (other processes
    rely on it). The window: the listener is subscribed again, the breaker is still open."""
    urls = make(retry_after=0.1)
    add(sessions, Doc, "a.png", "b.png")
    a, b = load(open_session(), Doc)
    wait_live(urls, b)

    def read_fails(*args: Any, **kwargs: Any) -> Any:
        raise redis_py.ConnectionError("simulated: a read timed out")

    monkeypatch.setattr(client, "get", read_fails, raising=False)  # pub/sub is untouched
    _ = a.url
    monkeypatch.delattr(client, "get")
    assert not urls.redis_available  # the breaker skips Redis: the core's clock is frozen
    wait_until(lambda: urls._local_live, "the listener subscribing again")
    assert a.url is not None  # signed while Redis is skipped

    clock.now += 60  # the breaker lets the next read try Redis
    client.reset()
    assert a.url is not None
    assert client.round_trips >= 1, "the L1 kept a URL that never reached Redis"
    key = urls.cache_key(a)
    assert key is not None and client.raw.exists(key) == 1
    assert urls.redis_available


def test_local_cache_size_zero_disables_the_l1(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
) -> None:
    signer = FakeSigner()
    urls = make(signer, local_cache_size=0)
    add(sessions, Doc, "a.png")
    [doc] = load(open_session(), Doc)
    wait_live(urls, doc)

    client.reset()
    for _ in range(10):
        _ = doc.url
    assert client.commands == {"GET": 10}
    assert len(signer.calls) == 1
    assert urls._local is None


# == 2. invalidation across processes ============================================================


@pytest.fixture
def peers(prefix: str) -> Iterator[tuple[CallerCounting, CallerCounting]]:
    """Two clients on one server: on fakeredis, two connections to one ``FakeServer``."""
    if REDIS_URL:
        a, b = redis_py.Redis.from_url(REDIS_URL), redis_py.Redis.from_url(REDIS_URL)
    else:
        server = fakeredis.FakeServer()
        a, b = fakeredis.FakeRedis(server=server), fakeredis.FakeRedis(server=server)
    yield CallerCounting(a), CallerCounting(b)
    if REDIS_URL:
        unlink_prefix(a, prefix)
    a.close()
    b.close()


def test_commit_drops_the_l1_entry_of_another_instance(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    peers: tuple[CallerCounting, CallerCounting],
) -> None:
    writer_client, reader_client = peers
    make(redis=writer_client)  # the writer, on Doc
    reader = make(redis=reader_client, base=PeerBase)  # on PeerDoc: "another process"
    first_id, _ = add(sessions, Doc, "old.png", "other.png")
    old, other = load(open_session(), PeerDoc)
    warm(reader, old, other)
    reader_client.reset()
    _ = old.url, other.url
    assert reader_client.round_trips == 0

    with sessions() as session:
        doc = session.get(Doc, first_id)
        assert doc is not None
        _ = doc.url
        doc.object_key = "new.png"
        session.commit()  # invalidates: UNLINK, then PUBLISH to every process

    def dropped() -> bool:
        reader_client.reset()
        _ = old.url  # the instance loaded before the commit: only the L1 could answer it
        return reader_client.round_trips > 0

    wait_until(dropped, "the other instance dropping its L1 entry")
    reader_client.reset()
    _ = other.url
    assert reader_client.round_trips == 0  # only the invalidated key left the L1
    fresh = open_session().get(PeerDoc, first_id)
    assert fresh is not None and "new.png" in (fresh.url or "")


def test_every_clear_reaches_the_l1_of_another_instance(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    peers: tuple[CallerCounting, CallerCounting],
) -> None:
    from sqla_signed_urls import CacheService

    writer_client, reader_client = peers
    writer = make(redis=writer_client)
    reader = make(redis=reader_client, base=PeerBase)
    first_id, _, _ = add(sessions, Doc, "a.png", "b.png", "c.png")
    first, second, third = load(open_session(), PeerDoc)
    warm(reader, first, second, third)
    service = CacheService(writer, model=Doc)

    def costs_a_round_trip(obj: Any) -> Callable[[], bool]:
        def check() -> bool:
            reader_client.reset()
            _ = obj.url
            return reader_client.round_trips > 0

        return check

    service.clear_file_url_cache(file_id=first_id)
    wait_until(costs_a_round_trip(first), "clearing one file reaching the other L1")
    reader_client.reset()
    _ = second.url, third.url
    assert reader_client.round_trips == 0

    service.clear_file_url_cache()
    wait_until(costs_a_round_trip(second), "clearing everything reaching the other L1")
    assert costs_a_round_trip(third)()
    assert costs_a_round_trip(first)()


CHILD = textwrap.dedent(
    """
    import sys, threading, time

    import redis
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    from sqla_signed_urls import ObjectKey, SignedURLs
    from sqla_signed_urls.testing import CountingRedis, FakeSigner

    redis_url, prefix, db_url = sys.argv[1:4]

    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = "fp_docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        object_key: Mapped[str | None] = mapped_column(ObjectKey(512))

    class MainThreadCounting(CountingRedis):
        def _count(self, name):
            if threading.current_thread() is threading.main_thread():
                super()._count(name)

    def say(*words):
        print(*words, flush=True)

    def wait_until(condition, what):
        deadline = time.monotonic() + 20
        while not condition():
            if time.monotonic() > deadline:
                say("timeout", what)
                sys.exit(1)
            time.sleep(0.005)

    client = MainThreadCounting(redis.Redis.from_url(redis_url))
    urls = SignedURLs(FakeSigner(), redis=client, key_prefix=prefix, local_cache_size=100)
    urls.install(Base)
    session = Session(create_engine(db_url))
    first, second = session.scalars(select(Doc).order_by(Doc.id)).all()
    first.url, second.url
    wait_until(lambda: urls._local_live, "listener")
    first.url, second.url
    client.reset()
    for _ in range(10):
        first.url, second.url
    say("ready", client.round_trips)

    sys.stdin.readline()  # the parent process has committed a new object key for `first`
    started = time.monotonic()

    def dropped():
        client.reset()
        first.url  # loaded before the commit: only the L1 can answer without a round trip
        return client.round_trips > 0

    wait_until(dropped, "invalidation")
    waited = time.monotonic() - started
    client.reset()
    second.url
    second_trips = client.round_trips
    session.expire_all()
    say("dropped", f"{waited:.3f}", second_trips, first.url)
    urls.close()
    """
)


class Child:
    """A child process speaking one line at a time; every read is bounded."""

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

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def read(self) -> list[str]:
        try:
            return self.lines.get(timeout=PATIENCE * 3).split()
        except queue.Empty:
            self.close(kill=True)
            pytest.fail(f"the child process said nothing; stderr:\n{self.stderr_path.read_text()}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self, *, kill: bool = False) -> int:
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._pump.join(PATIENCE)
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            if stream is not None and not stream.closed:
                stream.close()
        return self.proc.returncode


@pytest.mark.server
def test_commit_in_one_process_drops_the_l1_entry_in_another(
    real_redis_url: str, tmp_path: Path
) -> None:
    prefix = f"fp{RUN_ID}{uuid.uuid4().hex[:6]}:file_url:"
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = create_engine(db_url)
    FastBase.metadata.create_all(engine)
    raw = redis_py.Redis.from_url(real_redis_url)
    urls = SignedURLs(FakeSigner(), redis=raw, key_prefix=prefix, local_cache_size=0)
    urls.install(FastBase)
    child: Child | None = None
    try:
        with Session(engine) as session:
            session.add_all([Doc(id=1, object_key="old.png"), Doc(id=2, object_key="b.png")])
            session.commit()
        child = Child(tmp_path / "child.err", real_redis_url, prefix, db_url)
        assert child.read() == ["ready", "0"]  # both URLs served by the child's L1

        with Session(engine) as session:
            doc = session.get(Doc, 1)
            assert doc is not None
            doc.object_key = "new.png"
            session.commit()  # this process publishes the invalidation
        child.send("go")
        word, _waited, second_trips, fresh_url = child.read()
        assert word == "dropped"
        assert second_trips == "0"  # the other entry stayed in the child's L1
        assert "new.png" in fresh_url
        assert child.close() == 0, (tmp_path / "child.err").read_text()
    finally:
        if child is not None:
            child.close(kill=True)
        urls.uninstall()
        urls.close()
        unlink_prefix(raw, prefix)
        raw.close()
        engine.dispose()


class BreakableRedis(CallerCounting):
    """Its pub/sub connection can be broken on demand (fakeredis has no CLIENT KILL)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.break_channel = threading.Event()
        self.subscriptions = 0

    def pubsub(self, **kwargs: Any) -> Any:
        return _BreakablePubSub(self, self.raw.pubsub(**kwargs))


class _BreakablePubSub:
    def __init__(self, owner: BreakableRedis, inner: Any) -> None:
        self._owner = owner
        self._inner = inner

    def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        self._owner.subscriptions += 1
        return self._inner.subscribe(*args, **kwargs)

    def get_message(self, *args: Any, **kwargs: Any) -> Any:
        if self._owner.break_channel.is_set():
            self._owner.break_channel.clear()
            raise redis_py.ConnectionError("simulated: the pub/sub connection was lost")
        return self._inner.get_message(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_broken_channel_drops_the_whole_l1_and_resubscribes(
    make: Any, sessions: sessionmaker[Session], open_session: Callable[[], Session], prefix: str
) -> None:
    client = BreakableRedis(new_client())
    try:
        urls = make(redis=client, retry_after=0.1)
        add(sessions, Doc, "a.png", "b.png")
        a, b = load(open_session(), Doc)
        warm(urls, a, b)
        assert client.subscriptions == 1

        client.break_channel.set()
        wait_until(lambda: client.subscriptions == 2 and urls._local_live, "resubscribing")
        client.reset()
        _ = a.url, b.url
        assert client.round_trips == 2  # nothing survived in the L1 ...
        client.reset()
        _ = a.url, b.url
        assert client.round_trips == 0  # ... and it is filled again once resubscribed
    finally:
        if REDIS_URL:
            unlink_prefix(client.raw, prefix)
        client.raw.close()


@pytest.mark.server
@pytest.mark.parametrize(
    "kind",
    [
        "client_from_url",
        "redis-py defaults",
    ],
)
def test_killed_pubsub_connection_loses_no_invalidation(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    real_redis_url: str,
    kind: str,
) -> None:
    """Kill this process's subscriber connection in the same transaction that publishes an
    invalidation, so the message is lost for sure. Whether redis-py reconnects silently
    (the library's own client settings) or raises (redis-py defaults), the L1 must not keep
    serving what it missed: the whole L1 goes, and the listener subscribes again."""
    prefix = f"fp{RUN_ID}{uuid.uuid4().hex[:6]}:file_url:"
    name = f"fp-{uuid.uuid4().hex[:10]}"
    url = f"{real_redis_url}?client_name={name}"
    if kind == "client_from_url":
        raw = client_from_url(url, socket_timeout=0.25)  # what SignedURLs(redis=<url>) builds
    else:
        raw = redis_py.Redis.from_url(url)
    admin = redis_py.Redis.from_url(real_redis_url)
    client = CallerCounting(raw)
    try:
        urls = make(redis=client, key_prefix=prefix, retry_after=0.1)
        add(sessions, Doc, "a.png", "b.png")
        a, b = load(open_session(), Doc)
        warm(urls, a, b)

        def subscriber() -> str | None:
            found = [c["id"] for c in admin.client_list(_type="pubsub") if c["name"] == name]
            return found[0] if found else None

        killed = subscriber()
        assert killed is not None
        key = urls.cache_key(a)
        assert key is not None
        admin.unlink(key)
        pipe: Any = admin.pipeline(transaction=True)
        with pipe:  # MULTI: the message is queued for the subscriber, then the subscriber goes
            pipe.publish(f"{prefix}#invalidate", key)
            pipe.execute_command("CLIENT", "KILL", "ID", killed)
            pipe.execute()

        def resubscribed() -> bool:
            now = subscriber()
            return now is not None and now != killed and urls._local_live

        wait_until(resubscribed, "subscribing again")
        client.reset()
        _ = a.url
        assert client.round_trips >= 1, "the L1 served an entry whose invalidation it missed"
        client.reset()
        _ = b.url
        assert client.round_trips == 1, "the L1 outlived a broken channel"
    finally:
        unlink_prefix(admin, prefix)
        admin.close()
        raw.close()


# == 3. resolve() ================================================================================


def test_resolve_keeps_order_and_handles_none_duplicates_and_mixed_classes(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
) -> None:
    signer = FakeSigner()
    urls = make(signer)
    add(sessions, Doc, "a.png", None, "", "b.png")
    add(sessions, Photo, "p.jpg")
    session = open_session()
    a, none, empty, b = load(session, Doc)
    [photo] = load(session, Photo)
    objects = [b, photo, none, a, b, empty, photo, a]

    client.reset()
    got = urls.resolve(objects)
    assert client.commands == {"MGET": 1, "PIPELINE": 1}
    assert client.mget_sizes == [3]  # distinct keys only
    assert sorted(key for key, _ in signer.calls) == ["a.png", "b.png", "p.jpg"]
    assert got[2] is None and got[5] is None
    assert got == [o.url for o in objects]
    assert [u and urlsplit(u).path for u in got] == [
        "/b.png",
        "/p.jpg",
        None,
        "/a.png",
        "/b.png",
        None,
        "/p.jpg",
        "/a.png",
    ]
    assert urls.resolve(iter(objects)) == got  # any iterable
    assert urls.resolve([]) == []


def test_resolve_gives_two_copies_of_one_row_the_url_of_their_own_object_key(
    make: Any, sessions: sessionmaker[Session], open_session: Callable[[], Session]
) -> None:
    """Two sessions' copies of one row disagree after an edit the older one has not seen."""
    urls = make(FakeSigner())
    add(sessions, Doc, "old.png")
    [stale] = load(open_session(), Doc)
    fresh_session = open_session()
    [fresh] = load(fresh_session, Doc)
    fresh.object_key = "new.png"
    fresh_session.commit()

    got = urls.resolve([stale, fresh, stale])
    assert [u and urlsplit(u).path for u in got] == ["/old.png", "/new.png", "/old.png"]


def test_resolve_reads_the_rest_in_one_mget_and_fills_the_l1(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
) -> None:
    signer = FakeSigner()
    urls = make(signer)
    add(sessions, Doc, *(f"{i}.png" for i in range(10)))
    docs = load(open_session(), Doc)
    wait_live(urls, docs[0])
    urls.resolve(docs)  # Redis warm for all ten
    urls.clear_local()
    assert urls.resolve(docs[:4])  # four of them into the L1

    client.reset()
    got = urls.resolve(docs)
    assert client.commands == {"MGET": 1}
    assert client.mget_sizes == [6]  # the L1 answered the other four
    assert len(signer.calls) == 10

    client.reset()
    assert [d.url for d in docs] == got
    assert urls.resolve(docs) == got
    assert client.round_trips == 0


def test_resolve_cold_is_one_mget_and_one_pipelined_write(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
) -> None:
    signer = FakeSigner()
    urls = make(signer, local_cache_size=0)
    add(sessions, Doc, *(f"{i}.png" for i in range(20)))
    docs = load(open_session(), Doc)

    client.reset()
    got = urls.resolve(docs)
    assert client.commands == {"MGET": 1, "PIPELINE": 1}
    assert len(signer.calls) == 20
    for doc, url in zip(docs, got, strict=True):
        key = urls.cache_key(doc)
        assert key is not None
        assert url is not None and url in stored(client.raw, key)[2]

    client.reset()
    assert urls.resolve(docs) == got  # L1 off: one MGET, nothing to write
    assert client.commands == {"MGET": 1}
    assert len(signer.calls) == 20


# == 4. stable URLs ==============================================================================


def oss_v1_signer() -> OSSSigner:
    bucket = oss2.Bucket(oss2.Auth("id", "secret"), "https://oss-cn-hangzhou.aliyuncs.com", "bench")
    return OSSSigner(bucket)


def test_cold_processes_sign_identical_urls_within_a_window(
    make: Any, sessions: sessionmaker[Session], open_session: Callable[[], Session], clock: Clock
) -> None:
    """Two processes, each with its own (empty) Redis: the URLs are byte-identical."""
    one = make(oss_v1_signer(), redis=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    make(
        oss_v1_signer(),
        redis=fakeredis.FakeRedis(server=fakeredis.FakeServer()),
        base=PeerBase,
    )
    window = one.settings.window
    assert window == one.settings.cache_ttl // 10
    start = (int(clock.now) + one.settings.url_ttl) // window * window - one.settings.url_ttl
    add(sessions, Doc, "avatars/7 a+b.png")
    [doc] = load(open_session(), Doc)
    [peer] = load(open_session(), PeerDoc)

    clock.now = start + window + 1
    first = doc.url
    clock.now = start + 2 * window - 1  # later, same window
    second = peer.url
    assert first is not None and first == second
    assert expires_in(first) == one.expires_at(start + window + 1)

    clock.now = start + 2 * window  # the next window: a new expiry
    assert one.expires_at(clock.now) == expires_in(first) + window


@pytest.mark.parametrize(
    ("cache_ttl", "url_ttl", "url_window"), [(2700, 14400, None), (600, 3600, 7)]
)
def test_expiry_is_rounded_down_to_a_window_never_past_url_ttl(
    make: Any, cache_ttl: int, url_ttl: int, url_window: int | None
) -> None:
    urls = make(base=None, cache_ttl=cache_ttl, url_ttl=url_ttl, url_window=url_window)
    window = urls.settings.window
    assert 1 <= window <= cache_ttl // 10
    base = 1_764_000_000
    for now in range(base, base + 3 * window + 2):
        expires = urls.expires_at(now)
        assert expires % window == 0
        assert now + url_ttl - window < expires <= now + url_ttl


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_redis_ttl_is_shortened_so_served_urls_keep_min_validity(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
    clock: Clock,
    jitter: float,
) -> None:
    signer = FakeSigner()
    urls = make(signer, local_cache_size=0, ttl_jitter=jitter)
    s = urls.settings
    start = (int(clock.now) + s.url_ttl) // s.window * s.window - s.url_ttl
    clock.now = start + s.window - 1  # the worst moment: the most rounding
    add(sessions, Doc, "a.png")
    [doc] = load(open_session(), Doc)
    t0 = clock.now
    url = doc.url
    assert url is not None
    key = urls.cache_key(doc)
    assert key is not None
    expires_at, cache_until, _ = stored(client.raw, key)
    assert expires_at == expires_in(url) == urls.expires_at(t0)
    base_ttl = expires_at - s.min_validity - int(t0)
    assert base_ttl == s.cache_ttl - (s.window - 1)  # shortened by the rounding
    assert base_ttl - int(s.cache_ttl * jitter) <= cache_until - t0 <= base_ttl
    assert 0 < client.raw.ttl(key) <= cache_until - t0

    for now in (t0 + 1, (t0 + cache_until) // 2, cache_until - 1):
        clock.now = now
        served = doc.url
        assert served == url
        assert expires_in(served) - now >= s.min_validity
    assert len(signer.calls) == 1
    clock.now = cache_until
    assert expires_in(doc.url or "") - clock.now >= s.min_validity
    assert len(signer.calls) == 2


# == 5. no stampedes =============================================================================


class GatedSigner(FakeSigner):
    """Blocks in ``sign`` until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def sign(self, object_key: str, *, expires_at: int) -> str:
        url = super().sign(object_key, expires_at=expires_at)
        self.gate.wait(PATIENCE)
        return url


def test_concurrent_misses_for_one_key_sign_once(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting: list[int] = []

    class CountedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waiting.append(threading.get_ident())
            return super().wait(timeout)

    class Flight(core._Flight):
        __slots__ = ()

        def __init__(self, object_key: str) -> None:
            super().__init__(object_key)
            self.done = CountedEvent()

    monkeypatch.setattr(core, "_Flight", Flight)
    signer = GatedSigner()
    counting = CountingRedis(client.raw)  # every thread's round trips
    make(signer, redis=counting, local_cache_size=0)  # installed on Doc
    add(sessions, Doc, "a.png")
    [doc] = load(open_session(), Doc)
    n = 8
    results: list[str | None] = [None] * n

    def read(i: int) -> None:
        results[i] = doc.url

    threads = [threading.Thread(target=read, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: len(signer.calls) == 1 and len(waiting) == n - 1, "all threads missing")
    signer.gate.set()
    for t in threads:
        t.join(PATIENCE)
    assert not any(t.is_alive() for t in threads)
    assert len(signer.calls) == 1
    assert results[0] is not None and results == [results[0]] * n
    assert counting.commands["GET"] == n


def test_ttl_jitter_only_shortens_and_spreads_a_warmed_batch(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
    clock: Clock,
) -> None:
    urls = make(local_cache_size=0)
    s = urls.settings
    add(sessions, Doc, *(f"{i}.png" for i in range(50)))
    docs = load(open_session(), Doc)
    t0 = int(clock.now)
    urls.resolve(docs)
    expires_at = urls.expires_at(t0)
    base_ttl = expires_at - s.min_validity - t0
    jitter = int(s.cache_ttl * s.ttl_jitter)
    assert 0 < jitter <= s.cache_ttl // 10
    ttls = []
    for doc in docs:
        key = urls.cache_key(doc)
        assert key is not None
        stored_expiry, cache_until, _ = stored(client.raw, key)
        assert stored_expiry == expires_at
        ttls.append(cache_until - t0)
        assert client.raw.ttl(key) <= cache_until - t0
    assert all(base_ttl - jitter <= ttl <= base_ttl <= s.cache_ttl for ttl in ttls)
    assert len(set(ttls)) > 10  # not one cliff


# == 6. the hit path stays cheap with metrics on =================================================


def test_hits_send_no_signal_without_receivers_and_still_count(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not signals.cache_hit.receivers, "a receiver leaked from another test"
    sent: list[Any] = []
    monkeypatch.setattr(signals.cache_hit, "send", lambda *a, **kw: sent.append((a, kw)))
    urls = make()
    off = make(base=PeerBase, local_cache_size=0)
    add(sessions, Doc, *(f"{i}.png" for i in range(5)))
    docs = load(open_session(), Doc)
    peers = load(open_session(), PeerDoc)
    warm(urls, *docs)
    warm(off, *peers)

    hits = urls.stats.hits
    client.reset()
    for _ in range(20):
        _ = docs[0].url
    urls.resolve(docs)
    assert client.round_trips == 0
    assert urls.stats.hits == hits + 20 + len(docs)

    hits = off.stats.hits
    client.reset()
    for _ in range(10):
        _ = peers[0].url
    assert client.commands == {"GET": 10}  # one round trip per Redis hit, nothing more
    assert off.stats.hits == hits + 10
    assert sent == []

    def receiver(sender: Any, **kwargs: Any) -> None:
        pass

    signals.cache_hit.connect(receiver)
    try:
        _ = docs[0].url
    finally:
        signals.cache_hit.disconnect(receiver)
    assert len(sent) == 1  # the check above would have seen a send


# == accessors the operations layer builds on ===================================================


def test_clear_local_with_keys_drops_only_those(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
) -> None:
    urls = make(FakeSigner())
    add(sessions, Doc, "a.png", "b.png")
    a, b = load(open_session(), Doc)
    warm(urls, a, b)

    urls.clear_local([urls.cache_key(a) or ""])
    client.reset()
    _ = b.url
    assert client.round_trips == 0  # still in the L1
    _ = a.url
    assert client.round_trips == 1  # dropped: read from Redis again


def test_url_spec_and_installed_specs_describe_what_install_attached(make: Any) -> None:
    from sqla_signed_urls import ConfigurationError

    urls = make(FakeSigner())
    spec = urls.url_spec(Doc)
    assert (spec.cls, spec.attr, spec.column, spec.pk_attrs) == (Doc, "url", "object_key", ("id",))
    assert {(s.cls, s.attr) for s in urls.installed_specs()} == {(Doc, "url"), (Photo, "url")}
    with pytest.raises(ConfigurationError, match=r"Doc\.thumbnail is not a signed-URL attribute"):
        urls.url_spec(Doc, "thumbnail")


def test_sign_for_cache_returns_writes_and_keeps_them_out_of_the_l1(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    client: CallerCounting,
) -> None:
    signer = FakeSigner()
    urls = make(signer)
    (doc_id,) = add(sessions, Doc, "w.png")
    [doc] = load(open_session(), Doc)
    wait_live(urls, doc)  # signs and caches once
    urls.clear_local()
    client.raw.delete(urls.cache_key(doc) or "")
    signed_before, misses_before = urls.stats.signed, urls.stats.misses

    key = urls.cache_key(doc) or ""
    writes = urls.sign_for_cache([(key, "w.png", urls.url_spec(Doc))], reason="warm")
    [(written_key, value, ttl, until)] = writes
    assert written_key == key == f"{urls.settings.key_prefix}{doc_id}"
    assert value.endswith(b" w.png") and b"/w.png?" in value
    assert 0 < ttl <= urls.settings.cache_ttl and until == pytest.approx(time.time() + ttl, abs=2)
    assert (urls.stats.signed, urls.stats.misses) == (signed_before + 1, misses_before)
    assert not client.raw.exists(key)  # the caller stores them

    client.raw.set(key, value, ex=ttl)
    client.reset()
    calls = len(signer.calls)
    assert doc.url is not None and urlsplit(doc.url).path == "/w.png"
    assert client.round_trips == 1 and len(signer.calls) == calls  # from Redis, not the L1
