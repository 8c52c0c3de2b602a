"""Expiry and lifetimes: URLs are identical within a window (even from cold processes), the
expiry is rounded down to the window and never past ``url_ttl``, the Redis TTL is shortened so
every served URL keeps its minimum validity, jitter only shortens and spreads a warmed batch,
and concurrent misses for one key sign once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import fakeredis
import oss2
import pytest
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import core
from sqla_signed_urls.signers import OSSSigner
from sqla_signed_urls.testing import CountingRedis, FakeSigner

from ..conftest import wait_until
from ..helpers.read_path import (
    PATIENCE,
    CallerCounting,
    Clock,
    Doc,
    PeerBase,
    PeerDoc,
    add,
    expires_in,
    load,
    stored,
)

# -- stable URLs -------------------------------------------------------------------------------


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


# -- no stampedes ------------------------------------------------------------------------------


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
