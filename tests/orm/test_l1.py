"""The in-process layer (L1): a hit makes no Redis round trip (nor a signal without
receivers), it is a bounded LRU, an entry ends with its Redis lifetime and obeys the
minimum-validity and fingerprint rules, it is filled only alongside Redis, and it drops entries
when another instance commits or clears, or when its invalidation channel breaks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import fakeredis
import pytest
import redis as redis_py
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import signals
from sqla_signed_urls.testing import FakeSigner

from ..conftest import REDIS_URL, wait_until
from ..helpers.read_path import (
    CallerCounting,
    Clock,
    Doc,
    PeerBase,
    PeerDoc,
    add,
    expires_in,
    load,
    new_client,
    stored,
    unlink_prefix,
    wait_live,
    warm,
)


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
    assert urls.local is not None and len(urls.local) <= 3


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
    wait_until(lambda: urls.channel.live, "the listener subscribing again")
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
    assert urls.local is None


# -- the hit path stays cheap with metrics on --------------------------------------------------


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


# -- what the operations layer builds on -------------------------------------------------------


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


# -- invalidation from other instances ---------------------------------------------------------


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
        wait_until(lambda: client.subscriptions == 2 and urls.channel.live, "resubscribing")
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
