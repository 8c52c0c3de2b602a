"""Cache keys: primary keys of every type (integer, string, UUID, composite) map to distinct
keys made of URL-safe characters, models never share one, and lookalike string keys get URLs
of their own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.testing import CountingRedis, FakeSigner

from ..helpers.hostile import (
    HYPOTHESIS,
    PREFIX,
    HostileBase,
    HostileFile,
    PairFile,
    StrFile,
    UUIDFile,
    local_signer,
)

KEY_CHARS = re.compile(r"[A-Za-z0-9_.~%,-]*\Z")


@pytest.fixture(scope="module")
def pk_urls() -> Iterator[SignedURLs]:
    urls = SignedURLs(
        FakeSigner(), redis=fakeredis.FakeRedis(server=fakeredis.FakeServer()), key_prefix=PREFIX
    )
    urls.install(HostileBase)
    yield urls
    urls.uninstall()
    urls.close()


def _suffix(urls: SignedURLs, obj: Any) -> str:
    key = urls.cache_key(obj)
    assert key is not None
    assert key.startswith(PREFIX)
    rest = key[len(PREFIX) :]
    namespace, _, pk = rest.rpartition(":")
    assert KEY_CHARS.match(pk), f"unsafe characters in cache key {key!r}"
    assert namespace in ("", "s", "u", "p")
    return key


TEXT_PK = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@HYPOTHESIS
@given(a=st.integers(min_value=-(2**63), max_value=2**63 - 1), b=st.integers())
def test_int_primary_keys_are_collision_free(pk_urls: SignedURLs, a: int, b: int) -> None:
    ka = _suffix(pk_urls, HostileFile(id=a, object_key="k"))
    kb = _suffix(pk_urls, HostileFile(id=b, object_key="k"))
    assert (ka == kb) == (a == b)


@HYPOTHESIS
@given(a=TEXT_PK, b=TEXT_PK)
def test_str_primary_keys_are_collision_free(pk_urls: SignedURLs, a: str, b: str) -> None:
    ka = _suffix(pk_urls, StrFile(id=a, object_key="k"))
    kb = _suffix(pk_urls, StrFile(id=b, object_key="k"))
    assert (ka == kb) == (a == b)


@HYPOTHESIS
@given(a=st.uuids(), b=st.uuids())
def test_uuid_primary_keys_are_collision_free(
    pk_urls: SignedURLs, a: uuid.UUID, b: uuid.UUID
) -> None:
    ka = _suffix(pk_urls, UUIDFile(id=a, object_key="k"))
    kb = _suffix(pk_urls, UUIDFile(id=b, object_key="k"))
    assert (ka == kb) == (a == b)


@HYPOTHESIS
@given(a=st.tuples(TEXT_PK, st.integers()), b=st.tuples(TEXT_PK, st.integers()))
def test_composite_primary_keys_are_collision_free(
    pk_urls: SignedURLs, a: tuple[str, int], b: tuple[str, int]
) -> None:
    ka = _suffix(pk_urls, PairFile(owner=a[0], seq=a[1], object_key="k"))
    kb = _suffix(pk_urls, PairFile(owner=b[0], seq=b[1], object_key="k"))
    assert (ka == kb) == (a == b)


@HYPOTHESIS
@given(
    s=TEXT_PK,
    u=st.uuids(),
    i=st.integers(min_value=0, max_value=10**12),
    pair=st.tuples(TEXT_PK, st.integers()),
)
def test_keys_of_different_models_never_meet(
    pk_urls: SignedURLs, s: str, u: uuid.UUID, i: int, pair: tuple[str, int]
) -> None:
    keys = {
        _suffix(pk_urls, HostileFile(id=i, object_key="k")),
        _suffix(pk_urls, StrFile(id=s, object_key="k")),
        _suffix(pk_urls, UUIDFile(id=u, object_key="k")),
        _suffix(pk_urls, PairFile(owner=pair[0], seq=pair[1], object_key="k")),
    }
    assert len(keys) == 4


PAIRS = [("a", 1), ("a,1", 1), ("a%2C1", 1), ("", 0), (",", 0)]


def test_lookalike_string_keys_get_their_own_urls(
    key_env: tuple[SignedURLs, CountingRedis, sessionmaker[Session], list[Any]],
) -> None:
    urls, _, db, _ = key_env
    lookalikes = ["a/b", "a%2Fb", "a%252Fb", "a,b", "a:b", "a b", "a+b", "A/B", "1", "01", ""]
    with db() as session:
        session.add_all(StrFile(id=pk, object_key=f"k/{n}.png") for n, pk in enumerate(lookalikes))
        session.add_all(
            PairFile(owner=o, seq=s, object_key=f"p/{n}.png") for n, (o, s) in enumerate(PAIRS)
        )
        session.commit()
    signer = local_signer()
    with db() as session:
        for _ in range(2):  # the second round is served from the cache
            for n, pk in enumerate(lookalikes):
                file = session.get(StrFile, pk)
                assert file is not None
                assert signer.verify(urls.url_for(file)) == f"k/{n}.png"
            for n, pair_pk in enumerate(PAIRS):
                pair = session.get(PairFile, pair_pk)
                assert pair is not None
                assert signer.verify(urls.url_for(pair)) == f"p/{n}.png"
