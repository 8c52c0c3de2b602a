"""Issue 6, security: hostile cached values, hostile object keys, primary keys, secrets.

- Values under our keys that are garbage, truncated, huge, bad UTF-8, a pickle, or another
  object's value are misses: the right URL is served, nothing raises, nothing is unpickled.
- Object keys of every awkward kind get a URL whose path decodes back to exactly the key and
  that a browser will not rewrite, or a clear ``SigningError`` — and then nothing is cached.
- Primary keys of every type map to distinct cache keys made of URL-safe characters.
- AUTH against a password-protected ``redis-server`` with an ACL user (plain and TLS) works,
  and the password never shows up in logs, exception messages or ``repr()``.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, quote, unquote, urlsplit

import fakeredis
import oss2
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import String, Uuid, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from sqla_signed_urls import ConfigurationError, SignedURLs, SigningError, signals
from sqla_signed_urls.signers import LocalSigner, OSSSigner
from sqla_signed_urls.signers.base import quote_key, quote_keys
from sqla_signed_urls.testing import CountingRedis, FakeSigner
from sqla_signed_urls.types import ObjectKey

from .servers import RedisServer, require_redis_server

HYPOTHESIS = settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LOCAL_SECRET = "hostile-input-local-secret-0123456789"
OSS_SECRET = "hostile-input-oss-secret-abcdef"
PREFIX = "hostile:"
VICTIM_KEY = "victim/photo.png"
OTHER_KEY = "other/private-scan.pdf"


class HostileBase(DeclarativeBase):
    pass


class HostileFile(HostileBase):
    __tablename__ = "hostile_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(2048))


class StrFile(HostileBase):
    __tablename__ = "hostile_str_files"
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512, namespace="s"))


class UUIDFile(HostileBase):
    __tablename__ = "hostile_uuid_files"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512, namespace="u"))


class PairFile(HostileBase):
    __tablename__ = "hostile_pair_files"
    owner: Mapped[str] = mapped_column(String(300), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512, namespace="p"))


def key_of(url: str | None) -> str:
    """The object key a FakeSigner URL points at."""
    assert url is not None
    parts = urlsplit(url)
    assert parts.netloc == "files.test" and parts.query.endswith("&sig=fake")
    return unquote(parts.path[1:], errors="strict")


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


# -- hostile values under our keys ------------------------------------------------------------

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


# -- hostile object keys ----------------------------------------------------------------------

AWKWARD_KEYS = [
    "",
    " ",
    "   ",
    "\t",
    "a" * 1024,
    "b" * 1023,
    "../etc/passwd",
    "a/../b",
    "..",
    ".",
    "./a",
    "/leading/slash.png",
    "trailing/",
    "a//b",
    "\x00",
    "nul\x00inside",
    "bell\x07",
    "line\nbreak",
    "cr\rlf",
    "del\x7f",
    "c1\x85control",
    "line\u2028separator",
    "with space.png",
    "plus+sign.png",
    "100%.png",
    "%2e%2e/%2F",
    "hash#tag.png",
    "what?.png",
    "a?b=c&d#e",
    "semi;colon=eq&amp",
    "back\\slash\\..\\x",
    "中文/文件 名.jpg",
    "emoji-😀/ünïcödé.png",
    "deep/nested/path/to/file.tar.gz",
    "~tilde/'quote'/\"dq\"/<angle>",
]


def _dot_segment(segment: str) -> bool:
    return segment.lower() in (".", "..", "%2e", "%2e%2e", ".%2e", "%2e.")


def assert_browser_keeps(url: str) -> None:
    """A browser fetches exactly this URL: nothing to strip, no dot segments to resolve."""
    assert all(0x21 <= ord(c) <= 0x7E for c in url), f"unescaped character in {url!r}"
    path = urlsplit(url).path
    assert "\\" not in path
    assert not any(_dot_segment(s) for s in path.split("/")[1:]), f"dot segment in {url!r}"


def local_signer() -> LocalSigner:
    return LocalSigner(LOCAL_SECRET, "https://forum.test/files")


def oss_signer() -> OSSSigner:
    bucket = oss2.Bucket(
        oss2.Auth("hostile-input-key-id", OSS_SECRET),
        "https://oss-cn-hangzhou.aliyuncs.com",
        "campus-forum",
    )
    return OSSSigner(bucket)


def sign_or_error(signer: Any, object_key: str, expires_at: int, secret: str) -> str | None:
    """The URL, or ``None`` after checking the refusal is a clear ``SigningError``.

    Any other exception (``UnicodeEncodeError``, an oss2 error, ...) propagates and fails.
    """
    error: SigningError | None = None
    try:
        return str(signer.sign(object_key, expires_at=expires_at))
    except SigningError as exc:
        error = exc
    assert str(error)  # says what is wrong
    assert secret not in all_text_of(error)
    return None


def check_local_key(object_key: str) -> None:
    signer = local_signer()
    expires_at = int(time.time()) + 3600
    url = sign_or_error(signer, object_key, expires_at, LOCAL_SECRET)
    if url is None:
        return
    assert signer.verify(url) == object_key
    assert_browser_keeps(url)
    assert LOCAL_SECRET not in url


def check_oss_key(object_key: str) -> None:
    signer = oss_signer()
    expires_at = int(time.time()) + 3600
    url = sign_or_error(signer, object_key, expires_at, OSS_SECRET)
    if url is None:
        return
    parts = urlsplit(url)
    assert parts.scheme == "https"
    assert parts.netloc == "campus-forum.oss-cn-hangzhou.aliyuncs.com"
    assert unquote(parts.path, errors="strict") == "/" + object_key
    query = parse_qs(parts.query, strict_parsing=True)
    assert query["Expires"] == [str(expires_at)]
    assert len(query["Signature"]) == 1
    assert_browser_keeps(url)
    assert OSS_SECRET not in url


@pytest.mark.parametrize("object_key", AWKWARD_KEYS)
def test_awkward_keys_local_signer(object_key: str) -> None:
    check_local_key(object_key)


@pytest.mark.parametrize("object_key", [k for k in AWKWARD_KEYS if k not in (".", "..")])
def test_awkward_keys_oss_signer(object_key: str) -> None:
    check_oss_key(object_key)


@pytest.mark.parametrize("object_key", [".", ".."])
def test_dot_keys_oss_signer(object_key: str) -> None:
    check_oss_key(object_key)


def test_lone_surrogate_is_a_signing_error_local_signer() -> None:
    check_local_key("bad\ud800surrogate")


def test_lone_surrogate_is_a_signing_error_oss_signer() -> None:
    check_oss_key("bad\ud800surrogate")


ANY_TEXT = st.text(
    alphabet=st.characters(codec="utf-8"),  # every code point a database can hold
    max_size=80,
)
PATHS = st.lists(
    st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=12), max_size=5
).map("/".join)


@HYPOTHESIS
@given(object_key=st.one_of(ANY_TEXT, PATHS))
def test_any_key_local_signer(object_key: str) -> None:
    check_local_key(object_key)


@HYPOTHESIS
@given(object_key=st.one_of(ANY_TEXT, PATHS).filter(lambda k: k not in (".", "..")))
def test_any_key_oss_signer(object_key: str) -> None:
    check_oss_key(object_key)


@HYPOTHESIS
@given(object_key=st.one_of(ANY_TEXT, PATHS), safe=st.sampled_from(["", "/"]))
def test_quote_key_is_urllib_quote(object_key: str, safe: str) -> None:
    """The read path's fast quoting checks cached URLs: it must agree with urllib exactly."""
    assert quote_key(object_key, safe) == quote(object_key, safe=safe)


PLAIN_KEYS = st.text(alphabet="abcXYZ019_.~-/", max_size=30)


@HYPOTHESIS
@given(
    object_keys=st.lists(st.one_of(PLAIN_KEYS, PLAIN_KEYS.map(lambda k: k + "\n"), ANY_TEXT)),
    safe=st.sampled_from(["", "/"]),
)
def test_quote_keys_is_urllib_quote_of_each(object_keys: list[str], safe: str) -> None:
    """The page-at-once quoting: mostly plain keys, some with a newline or anything else."""
    assert quote_keys(object_keys, safe) == [quote(key, safe=safe) for key in object_keys]


@pytest.fixture
def key_env() -> Iterator[tuple[SignedURLs, CountingRedis, sessionmaker[Session], list[Any]]]:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    HostileBase.metadata.create_all(engine)
    client = CountingRedis(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    urls = SignedURLs(local_signer(), redis=client, key_prefix=PREFIX, local_cache_size=0)
    urls.install(HostileBase)
    failures: list[Any] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        failures.append(kwargs["error"])

    signals.sign_failed.connect(on_failed)
    yield urls, client, sessionmaker(engine, expire_on_commit=False), failures
    signals.sign_failed.disconnect(on_failed)
    urls.uninstall()
    urls.close()
    engine.dispose()


def test_awkward_keys_through_the_model_and_nothing_cached_for_rejected_keys(
    key_env: tuple[SignedURLs, CountingRedis, sessionmaker[Session], list[Any]],
) -> None:
    urls, client, db, failures = key_env
    storable = [k for k in AWKWARD_KEYS if "\x00" not in k]  # SQLite cuts strings at NUL
    with db() as session:
        session.add_all(HostileFile(id=i, object_key=k) for i, k in enumerate(storable, 1))
        session.commit()
    signer = local_signer()
    with db() as session:
        files = [session.get(HostileFile, i) for i in range(1, len(storable) + 1)]
        client.reset()
        page = urls.resolve(files)
        for file, url in zip(files, page, strict=True):
            assert file is not None
            assert urls.url_for(file) == url
            key = file.object_key
            try:
                signer.sign(key or "", expires_at=int(time.time()) + 3600)
            except SigningError:
                assert url is None
                assert client.exists(f"{PREFIX}{file.id}") == 0, f"cached a rejected key {key!r}"
                continue
            assert url is not None
            assert signer.verify(url) == key
            assert client.exists(f"{PREFIX}{file.id}") == 1
    assert failures and all(isinstance(f, SigningError) for f in failures)


# -- primary keys -----------------------------------------------------------------------------

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


# -- AUTH, TLS and secrets --------------------------------------------------------------------

REDIS_PASSWORD = "hostile-Redis-pw-7f3a9c"


def all_text_of(exc: BaseException) -> str:
    """Everything a traceback or log line could show of ``exc``, its chain included."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis_server()
    srv = RedisServer(tmp_path / "auth", user="app", password=REDIS_PASSWORD)
    srv.start()
    yield srv
    srv.close()


def _use(urls: SignedURLs, db: sessionmaker[Session]) -> list[str | None]:
    with db() as session:
        files = [session.get(HostileFile, 1), session.get(HostileFile, 2)]
        return [urls.url_for(f) for f in files if f is not None]


@pytest.fixture
def two_rows() -> Iterator[sessionmaker[Session]]:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    HostileBase.metadata.create_all(engine)
    db = sessionmaker(engine, expire_on_commit=False)
    with db() as session:
        session.add_all(
            [HostileFile(id=1, object_key=VICTIM_KEY), HostileFile(id=2, object_key=OTHER_KEY)]
        )
        session.commit()
    yield db
    engine.dispose()


def test_acl_user_and_password_from_the_url(
    auth_server: RedisServer, two_rows: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    urls = SignedURLs(local_signer(), redis=auth_server.url(), key_prefix=PREFIX)
    urls.install(HostileBase)
    try:
        first = _use(urls, two_rows)
        assert _use(urls, two_rows) == first
        assert urls.stats.errors == 0
        with redis.Redis(
            port=auth_server.port, username="app", password=REDIS_PASSWORD, socket_timeout=5
        ) as check:
            assert check.exists(f"{PREFIX}1") == 1
        for text in (repr(urls), repr(urls.store), repr(urls.signer), repr(urls.redis)):
            assert REDIS_PASSWORD not in text
            assert LOCAL_SECRET not in text
    finally:
        urls.uninstall()
        urls.close()
        urls.redis.close()
    assert not [r for r in caplog.records if REDIS_PASSWORD in r.getMessage()]


def test_wrong_password_falls_back_without_leaking_it(
    auth_server: RedisServer, two_rows: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "hostile-wrong-pw-91be20"
    url = f"redis://app:{wrong}@127.0.0.1:{auth_server.port}/0"
    errors: list[BaseException] = []

    def on_error(sender: Any, error: BaseException) -> None:
        if sender is urls:  # only this test's SignedURLs
            errors.append(error)

    signals.cache_error.connect(on_error)
    urls = SignedURLs(local_signer(), redis=url, key_prefix=PREFIX, retry_after=0.2)
    urls.install(HostileBase)
    try:
        signer = local_signer()
        assert [signer.verify(u) for u in _use(urls, two_rows)] == [VICTIM_KEY, OTHER_KEY]
        assert urls.stats.breaker_opened == 1
    finally:
        signals.cache_error.disconnect(on_error)
        urls.uninstall()
        urls.close()
        urls.redis.close()
    assert errors and all(isinstance(e, redis.AuthenticationError) for e in errors)
    for exc in errors:
        assert wrong not in all_text_of(exc)
    for record in caplog.records:
        assert wrong not in record.getMessage()
        assert REDIS_PASSWORD not in record.getMessage()


def test_rediss_with_acl_user_and_password(tmp_path: Path, two_rows: sessionmaker[Session]) -> None:
    require_redis_server()
    with RedisServer(tmp_path / "tls", tls=True, user="app", password=REDIS_PASSWORD) as srv:
        url = srv.url(query=f"ssl_ca_certs={srv.ca_file}")
        assert url.startswith("rediss://app:")
        urls = SignedURLs(local_signer(), redis=url, key_prefix=PREFIX)
        urls.install(HostileBase)
        try:
            first = _use(urls, two_rows)
            assert _use(urls, two_rows) == first
            assert urls.stats.errors == 0
            with redis.Redis(
                host="127.0.0.1",
                port=srv.port,
                username="app",
                password=REDIS_PASSWORD,
                ssl=True,
                ssl_ca_certs=str(srv.ca_file),
                socket_timeout=5,
            ) as check:
                assert check.exists(f"{PREFIX}1") == 1
            assert REDIS_PASSWORD not in repr(urls) + repr(urls.redis) + repr(urls.store)
        finally:
            urls.uninstall()
            urls.close()
            urls.redis.close()


def test_reprs_hold_no_secrets() -> None:
    oss = oss_signer()
    local = local_signer()
    for signer in (oss, local):
        urls = SignedURLs(
            signer, redis=f"redis://app:{REDIS_PASSWORD}@127.0.0.1:1/0", key_prefix=PREFIX
        )
        try:
            texts = [repr(urls), str(urls), repr(urls.signer), repr(urls.store), repr(urls.redis)]
            texts.append(repr(urls.settings))
            for text in texts:
                assert REDIS_PASSWORD not in text
                assert OSS_SECRET not in text
                assert LOCAL_SECRET not in text
        finally:
            urls.close()
            urls.redis.close()


MALFORMED = [
    pytest.param("//app:{pw}@127.0.0.1:6379/0", id="no-scheme"),
    pytest.param(":{pw}@127.0.0.1", id="empty-scheme"),
    pytest.param("app:{pw}@127.0.0.1:6379", id="user-as-scheme"),
    pytest.param("redis://app:{pw}/x@127.0.0.1:6379/0", id="slash-in-password"),
    pytest.param("redis://app:{pw}@127.0.0.1:notaport/0", id="bad-port"),
    pytest.param("redis://app:{pw}@[::1/0", id="bad-ipv6"),
    pytest.param("http://app:{pw}@127.0.0.1/0", id="http"),
    pytest.param("redis://app:{pw}@127.0.0.1:99999/0", id="port-out-of-range"),
]


@pytest.mark.parametrize("template", MALFORMED)
def test_malformed_urls_raise_configuration_errors_without_the_password(template: str) -> None:
    url = template.format(pw=REDIS_PASSWORD)
    exc = _configuration_error(url)
    if exc is None:
        return  # accepted (and nothing connects at construction)
    assert isinstance(exc, ConfigurationError), repr(exc)
    assert "redis" in str(exc).lower()
    assert REDIS_PASSWORD not in all_text_of(exc)
    assert REDIS_PASSWORD[:8] not in str(exc)


def _configuration_error(url: str) -> BaseException | None:
    try:
        urls = SignedURLs(FakeSigner(), redis=url)
    except Exception as exc:
        return exc
    urls.close()
    urls.redis.close()
    return None
