"""Hostile values under our keys: garbage, truncated, huge, bad UTF-8, a pickle, another
object's value, a forged URL or a value of another Redis type are all misses: the right URL is
served, nothing raises, nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from typing import Any
from unittest import mock

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.testing import CountingRedis, FakeSigner

from ..helpers.hostile import (
    HYPOTHESIS,
    OTHER_KEY,
    PREFIX,
    VICTIM_KEY,
    HostileBase,
    HostileFile,
    key_of,
)


class Env:
    """One installed SignedURLs on fakeredis with the in-process layer off, plus two rows."""

    def __init__(self) -> None:
        self.engine = create_engine("sqlite://", poolclass=StaticPool)
        HostileBase.metadata.create_all(self.engine)
        self.db = sessionmaker(self.engine, expire_on_commit=False)
        self.raw = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        self.client = CountingRedis(self.raw)
        self.signer = FakeSigner()
        self.urls = SignedURLs(
            self.signer, redis=self.client, key_prefix=PREFIX, local_cache_size=0
        )
        self.urls.install(HostileBase)
        with self.db() as session:
            session.add_all(
                [HostileFile(id=1, object_key=VICTIM_KEY), HostileFile(id=2, object_key=OTHER_KEY)]
            )
            session.commit()
        with self.db() as session:
            one, two = session.get(HostileFile, 1), session.get(HostileFile, 2)
            self.url1, self.url2 = self.urls.url_for(one), self.urls.url_for(two)
        self.valid1 = self.raw.get(f"{PREFIX}1")
        self.valid2 = self.raw.get(f"{PREFIX}2")
        assert self.valid1 is not None and self.valid2 is not None
        assert self.url1 is not None and self.url1.encode() in self.valid1  # readable text

    def read_victim(self) -> tuple[str | None, list[str | None]]:
        with self.db() as session:
            one, two = session.get(HostileFile, 1), session.get(HostileFile, 2)
            return self.urls.url_for(one), self.urls.resolve([one, two])

    def close(self) -> None:
        self.urls.uninstall()
        self.urls.close()
        self.engine.dispose()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.close()


_pwned: list[str] = []


def _record_pwn(tag: str) -> None:
    _pwned.append(tag)


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record_pwn, ("unpickled",))


@contextlib.contextmanager
def no_deserializers() -> Iterator[list[str]]:
    """Fail loudly if anything on the read path unpickles or unmarshals a value."""
    calls: list[str] = []

    def trap(name: str) -> Any:
        def called(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called on a cached value")

        return called

    with (
        mock.patch("pickle.loads", trap("pickle.loads")),
        mock.patch("pickle.load", trap("pickle.load")),
        mock.patch("marshal.loads", trap("marshal.loads")),
    ):
        yield calls


def check_victim_read(env: Env, value: bytes) -> None:
    env.raw.set(f"{PREFIX}1", value)
    with no_deserializers() as calls:
        single, page = env.read_victim()
    assert calls == []
    assert _pwned == []
    assert key_of(single) == VICTIM_KEY
    assert [key_of(u) for u in page] == [VICTIM_KEY, OTHER_KEY]
    # The URL a fresh signing gives now (the stable-URL window may have moved on since url1).
    assert single in (env.url1, env.signer.sign(VICTIM_KEY, expires_at=env.urls.expires_at()))


BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]


@st.composite
def hostile_values(draw: st.DrawFn, valid: bytes, other: bytes, url: bytes) -> bytes:
    """Values that must all be misses for row 1 (and never raise)."""
    url_at = valid.index(url)
    outside_url = [i for i in range(len(valid)) if not url_at <= i < url_at + len(url)]
    kind = draw(
        st.sampled_from(
            ["binary", "text", "fields", "truncated", "bad_utf8", "flip", "huge", "other", "pickle"]
        )
    )
    if kind == "binary":
        return draw(st.binary(max_size=600))
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if kind == "fields":  # wrong field counts, wrong field contents
        fields = draw(st.lists(st.text(min_size=0, max_size=40), min_size=0, max_size=9))
        return " ".join(fields).encode("utf-8", "surrogatepass")
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "bad_utf8":
        at = draw(st.integers(0, len(valid)))
        return valid[:at] + draw(st.sampled_from(BAD_UTF8)) + valid[at:]
    if kind == "flip":  # corrupt one byte anywhere but inside the URL itself
        at = draw(st.sampled_from(outside_url))
        new = draw(st.integers(0, 255).filter(lambda b: b != valid[at]))
        return valid[:at] + bytes([new]) + valid[at + 1 :]
    if kind == "huge":
        size = draw(st.sampled_from([16 * 1024 + 1, 64 * 1024, 1024 * 1024]))
        return valid + b" " + b"A" * size
    if kind == "other":  # another object's genuine value, copied under our key
        return other
    return pickle.dumps(_Evil())


@HYPOTHESIS
@given(data=st.data())
def test_hostile_values_are_misses(env: Env, data: st.DataObject) -> None:
    value = data.draw(hostile_values(env.valid1, env.valid2, env.url1.encode()))
    check_victim_read(env, value)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b" ",
        b"\x00" * 64,
        b"1 2 3 4 5 6 7 8 9",
        b"99999999999999999999999999999 1 x y z",
        b"-1 -1 deadbeef https://files.test/victim/photo.png victim/photo.png",
        b"__import__('os').system('false')",
        b'{"url": "https://evil.test/"}',
    ],
    ids=["empty", "space", "nul", "nine-fields", "huge-int", "negative", "python", "json"],
)
def test_specific_hostile_values_are_misses(env: Env, value: bytes) -> None:
    check_victim_read(env, value)


def test_a_pickle_under_our_key_is_never_unpickled(env: Env) -> None:
    check_victim_read(env, pickle.dumps(_Evil()))
    check_victim_read(env, pickle.dumps({"url": "https://evil.test/x"}))


def _forgeries(env: Env) -> list[bytes]:
    """Well-formed values under row 1's key whose URL points somewhere else."""
    evil_same_path = env.url1.replace("https://files.test/", "https://evil.test/")
    return [
        env.valid1.replace(env.url1.encode(), env.url2.encode()),
        env.valid1.replace(env.url1.encode(), evil_same_path.encode()),
        env.valid1.replace(env.url1.encode(), b"https://files.test/victim/photo.pnG?x=1&sig=fake"),
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["other-object", "other-host", "other-path"])
def test_forged_value_with_a_url_for_another_object_is_a_miss(env: Env, which: int) -> None:
    check_victim_read(env, _forgeries(env)[which])


@pytest.mark.parametrize("kind", ["hash", "list", "set", "zset"])
def test_a_value_of_another_type_is_a_miss_not_an_outage(kind: str) -> None:
    env = Env()  # its own: a breaker opened here must not leak into other tests
    key = f"{PREFIX}1"
    env.raw.delete(key)
    {
        "hash": lambda: env.raw.hset(key, "url", env.url2),
        "list": lambda: env.raw.rpush(key, env.url2),
        "set": lambda: env.raw.sadd(key, env.url2),
        "zset": lambda: env.raw.zadd(key, {env.url2: 1}),
    }[kind]()
    errors, opened = env.urls.stats.errors, env.urls.stats.breaker_opened
    try:
        with env.db() as session:
            assert key_of(env.urls.url_for(session.get(HostileFile, 1))) == VICTIM_KEY
        assert env.urls.stats.errors == errors
        assert env.urls.stats.breaker_opened == opened
        assert env.urls.redis_available
        assert env.raw.type(key) == b"string"  # replaced by our value
    finally:
        env.close()
