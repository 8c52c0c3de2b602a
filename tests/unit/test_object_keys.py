"""Hostile object keys: every awkward kind gets a URL whose path decodes back to exactly the
key and that a browser will not rewrite, or a clear ``SigningError``, and then nothing is
cached. The read path's fast quoting must agree with ``urllib.parse.quote`` exactly.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import SignedURLs, SigningError
from sqla_signed_urls.signers.base import quote_key, quote_keys
from sqla_signed_urls.testing import CountingRedis

from ..helpers.hostile import (
    HYPOTHESIS,
    LOCAL_SECRET,
    OSS_SECRET,
    PREFIX,
    HostileFile,
    all_text_of,
    local_signer,
    oss_signer,
)

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
