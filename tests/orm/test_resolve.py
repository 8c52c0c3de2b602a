"""``resolve()``: a page of objects keeps its order, handles ``None``, duplicates and several
classes, reads the L1 first, then the rest in one MGET, and writes what it signed in one
pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls.testing import FakeSigner

from ..helpers.read_path import CallerCounting, Doc, Photo, add, load, stored, wait_live


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
