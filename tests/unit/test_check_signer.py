"""check_signer(): the built-in signers keep the signer contract; broken signers are named."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import oss2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqla_signed_urls import SigningError
from sqla_signed_urls.signers import LocalSigner, OSSSigner, Signer
from sqla_signed_urls.testing import FakeSigner, check_signer

ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"
REGION = "cn-hangzhou"
KEY_ID = "check-signer-key-id"
KEY_SECRET = "check-signer-key-secret-0123456789"
LOCAL_SECRET = "check-signer-local-secret-0123456789"


def oss_signer(auth: oss2.AuthBase) -> OSSSigner:
    return OSSSigner(oss2.Bucket(auth, ENDPOINT, "campus-forum", region=REGION))


class GoodSigner(Signer):
    """A correct signer the broken ones below change one thing of."""

    name = "cdn:test"

    def url_prefix(self, object_key: str) -> str | None:
        return f"https://cdn.test/{quote(object_key, safe='/')}?"

    def sign(self, object_key: str, *, expires_at: int) -> str:
        return f"https://cdn.test/{quote(object_key, safe='/')}?Expires={expires_at}&sig=secret1"


# -- the built-in signers pass --------------------------------------------------------------


@pytest.mark.parametrize(
    "signer",
    [
        pytest.param(LocalSigner(LOCAL_SECRET, "/files"), id="local-path"),
        pytest.param(LocalSigner(LOCAL_SECRET, "https://example.com/files/"), id="local-url"),
        pytest.param(FakeSigner(), id="fake"),
        pytest.param(FakeSigner(max_url_ttl=600), id="fake-short-ttl"),
        pytest.param(GoodSigner(), id="good"),
    ],
)
def test_builtin_and_correct_signers_pass(signer: Signer) -> None:
    check_signer(signer)


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param(oss2.Auth(KEY_ID, KEY_SECRET), id="v1"),
        pytest.param(oss2.make_auth(KEY_ID, KEY_SECRET, oss2.AUTH_VERSION_4), id="v4"),
        pytest.param(oss2.StsAuth(KEY_ID, KEY_SECRET, "sts-token-value"), id="sts-v1"),
        pytest.param(
            oss2.StsAuth(KEY_ID, KEY_SECRET, "sts-token-value", auth_version=oss2.AUTH_VERSION_4),
            id="sts-v4",
        ),
    ],
)
def test_oss_signer_passes_with_every_auth(auth: oss2.AuthBase) -> None:
    signer = oss_signer(auth)
    check_signer(signer)
    assert signer.stable  # V4 writes the signing time SignedURLs gives it (signed_at)
    assert signer.takes_signed_at is (signer.version == "v4")


def test_own_keys_replace_the_hard_list() -> None:
    class AsciiOnly(GoodSigner):
        def sign(self, object_key: str, *, expires_at: int) -> str:
            if not object_key.isascii():
                raise SigningError("this CDN takes ASCII keys only")
            return super().sign(object_key, expires_at=expires_at)

    with pytest.raises(AssertionError, match=r"raised SigningError.*for a key with accents"):
        check_signer(AsciiOnly())
    check_signer(AsciiOnly(), keys=["avatars/7.png", "posts/a b#c.png"])
    with pytest.raises(AssertionError, match=r"'héllo.png'.*one of the keys you passed"):
        check_signer(AsciiOnly(), keys=["avatars/7.png", "héllo.png"])


@settings(max_examples=60, deadline=None)
@given(
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc")),  # no surrogates, no control characters
        min_size=1,
        max_size=40,
    )
    # LocalSigner refuses empty, "." and ".." path segments; OSSSigner blank keys, and OSS
    # keys cannot begin with "?"
    .filter(lambda key: not any(part in ("", ".", "..") for part in key.split("/")))
    .filter(lambda key: key.strip() and not key.startswith("?"))
)
def test_any_key_the_builtin_signers_sign_round_trips(key: str) -> None:
    for signer in (
        LocalSigner(LOCAL_SECRET, "https://example.com/files"),
        FakeSigner(),
        oss_signer(oss2.Auth(KEY_ID, KEY_SECRET)),
    ):
        check_signer(signer, keys=[key, key + "x", "a/" + key])


# -- broken signers are named ----------------------------------------------------------------


def test_prefix_on_another_host_fails() -> None:
    class OtherHost(GoodSigner):
        def url_prefix(self, object_key: str) -> str | None:
            return f"https://other.test/{quote(object_key, safe='/')}?"

    with pytest.raises(AssertionError) as failure:
        check_signer(OtherHost())
    message = str(failure.value)
    assert "OtherHost.sign('avatar.png') gave 'https://cdn.test/avatar.png?" in message
    assert "does not begin with url_prefix('avatar.png') = 'https://other.test/avatar.png?'" in (
        message
    )
    assert "make url_prefix() return how every URL for the key begins" in message


def test_unquoted_prefix_fails_on_the_first_key_that_needs_quoting() -> None:
    class UnquotedPrefix(GoodSigner):
        def url_prefix(self, object_key: str) -> str | None:
            return f"https://cdn.test/{object_key}?"

    expected = (
        "UnquotedPrefix.sign('posts/my holiday photo.jpg') gave "
        "'https://cdn.test/posts/my%20holiday%20photo.jpg?Expires=",
        "which does not begin with url_prefix('posts/my holiday photo.jpg') = "
        "'https://cdn.test/posts/my holiday photo.jpg?'",
        "they part at character 25",
        "or None when that cannot be told",
    )
    with pytest.raises(AssertionError) as failure:
        check_signer(UnquotedPrefix())
    for part in expected:
        assert part in str(failure.value)


def test_messages_never_show_a_signature() -> None:
    class OtherHost(GoodSigner):
        def url_prefix(self, object_key: str) -> str | None:
            return "https://other.test/"

    with pytest.raises(AssertionError, match=r"&sig=\.\.\.'") as failure:
        check_signer(OtherHost())
    assert "secret1" not in str(failure.value)


def test_stable_signer_that_reads_the_clock_fails() -> None:
    class Clocked(GoodSigner):
        def sign(self, object_key: str, *, expires_at: int) -> str:
            return super().sign(object_key, expires_at=expires_at) + f"&t={int(time.time())}"

    with pytest.raises(
        AssertionError,
        match=r"Clocked\.stable is True, but signing 'avatar\.png' with the same expires_at "
        r"61 s later gave another URL: .*set stable = False",
    ):
        check_signer(Clocked())

    Clocked.stable = False
    check_signer(Clocked())


def test_stable_signer_that_reads_datetime_fails() -> None:
    class OwnV4(oss2.AuthV4):
        """An auth of its own kind: OSSSigner leaves it to oss2, which reads datetime."""

        def _sign_url(self, *args: Any, **kwargs: Any) -> str:
            return str(super()._sign_url(*args, **kwargs))

    class V4ClaimingStable(OSSSigner):
        def __init__(self, bucket: oss2.Bucket) -> None:
            super().__init__(bucket)
            self.stable = True
            self.max_url_ttl = None  # so only the stability check can fail

    auth = OwnV4(KEY_ID, KEY_SECRET)
    signer = V4ClaimingStable(oss2.Bucket(auth, ENDPOINT, "campus-forum", region=REGION))
    with pytest.raises(AssertionError, match=r"V4ClaimingStable\.stable is True.*stable = False"):
        check_signer(signer)


def test_clock_in_the_url_is_found_even_when_the_patch_cannot_see_it() -> None:
    class Stamped(GoodSigner):
        def sign(self, object_key: str, *, expires_at: int) -> str:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(_real_time()))
            return super().sign(object_key, expires_at=expires_at) + f"&x-date={stamp}"

    _real_time = time.time  # read before check_signer patches time.time
    with pytest.raises(AssertionError, match=r"carries the signing time \(x-date=\d{8}T\d{6}Z\)"):
        check_signer(Stamped())


@pytest.mark.parametrize(("char", "key"), [("#", "notes/#1 todo.txt"), ("?", "faq/why?.md")])
def test_signer_not_quoting_hash_or_question_mark_fails(char: str, key: str) -> None:
    class NoQuote(GoodSigner):
        def url_prefix(self, object_key: str) -> str | None:
            return f"https://cdn.test/{quote(object_key, safe='/' + char)}?"

        def sign(self, object_key: str, *, expires_at: int) -> str:
            return (
                f"https://cdn.test/{quote(object_key, safe='/' + char)}"
                f"?Expires={expires_at}&sig=secret1"
            )

    with pytest.raises(AssertionError) as failure:
        check_signer(NoQuote())
    message = str(failure.value)
    assert f"NoQuote.sign({key!r})" in message
    assert f"does not end with the key {key!r}, so the URL points to another object" in message
    assert f"an unquoted {char!r} begins the" in message
    assert "urllib.parse.quote(key, safe='/')" in message
    assert "secret1" not in message


@pytest.mark.parametrize(
    ("query", "lives"),
    [
        pytest.param("Expires={expires_at_plus_day}", "90000 s", id="absolute"),
        pytest.param("X-Amz-Expires=7200", "7200 s", id="relative"),
    ],
)
def test_url_living_longer_than_max_url_ttl_fails(query: str, lives: str) -> None:
    class TooLong(GoodSigner):
        max_url_ttl = 3600

        def sign(self, object_key: str, *, expires_at: int) -> str:
            params = query.format(expires_at_plus_day=expires_at + 86400)
            return f"https://cdn.test/{quote(object_key, safe='/')}?{params}&X-Amz-Signature=abc"

    with pytest.raises(AssertionError) as failure:
        check_signer(TooLong())
    message = str(failure.value)
    assert "TooLong.sign('avatar.png', expires_at=now + 3600)" in message
    assert f"live {lives}, more than max_url_ttl = 3600" in message
    assert "X-Amz-Signature=..." in message


def test_max_url_ttl_the_signer_refuses_fails() -> None:
    class Refuses(GoodSigner):
        max_url_ttl = 7 * 24 * 3600

        def sign(self, object_key: str, *, expires_at: int) -> str:
            if expires_at - time.time() > 24 * 3600:
                raise SigningError("at most one day")
            return super().sign(object_key, expires_at=expires_at)

    with pytest.raises(
        AssertionError,
        match=r"expires_at=now \+ 604800\) \(max_url_ttl ahead\) raised SigningError\("
        r"'at most one day'\): max_url_ttl must be a lifetime sign\(\) accepts; lower it",
    ):
        check_signer(Refuses())


def test_no_limit_but_thirty_days_refused_fails() -> None:
    class Refuses(GoodSigner):
        def sign(self, object_key: str, *, expires_at: int) -> str:
            if expires_at - time.time() > 7 * 24 * 3600:
                raise SigningError("at most 7 days")
            return super().sign(object_key, expires_at=expires_at)

    with pytest.raises(AssertionError, match=r"30 days \(max_url_ttl is None\).*set max_url_ttl"):
        check_signer(Refuses())


def test_url_prefixes_disagreeing_with_url_prefix_fails() -> None:
    class Sorted(GoodSigner):
        def url_prefixes(self, object_keys: Sequence[str]) -> list[str | None]:
            return [self.url_prefix(key) for key in sorted(object_keys)]

    with pytest.raises(
        AssertionError,
        match=r"Sorted\.url_prefixes\(\[\.\.\.\]\) gave .* \(position \d+ of \d+\), but "
        r"url_prefix\(.*the two must agree, key by key and in order",
    ):
        check_signer(Sorted())


def test_url_prefixes_of_the_wrong_length_fails() -> None:
    class Short(GoodSigner):
        def url_prefixes(self, object_keys: Sequence[str]) -> list[str | None]:
            return [self.url_prefix(key) for key in object_keys][:-1]

    with pytest.raises(AssertionError, match=r"url_prefixes\(\) of 16 keys gave 15 prefixes"):
        check_signer(Short())


def test_prefix_that_fits_another_key_fails() -> None:
    class NoQuestionMark(GoodSigner):
        def url_prefix(self, object_key: str) -> str | None:
            return f"https://cdn.test/{quote(object_key, safe='/')}"

    with pytest.raises(
        AssertionError,
        match=re.escape(
            "NoQuestionMark.sign('avatars/2024/05/7.png~1') gave "
            "'https://cdn.test/avatars/2024/05/7.png~1?Expires="
        )
        + r".*which begins with url_prefix\('avatars/2024/05/7\.png'\).*end the prefix with "
        r"the whole quoted path and the '\?'",
    ):
        check_signer(NoQuestionMark())


def test_url_is_for_rejecting_its_own_urls_fails() -> None:
    class Picky(GoodSigner):
        def url_is_for(self, url: str, object_key: str) -> bool:
            return "%" not in url

    with pytest.raises(AssertionError, match=r"url_is_for\(that URL, 'posts/my holiday photo"):
        check_signer(Picky())


def test_two_keys_with_one_url_fail() -> None:
    class Aliasing(GoodSigner):
        def url_prefix(self, object_key: str) -> str | None:
            return None

        def sign(self, object_key: str, *, expires_at: int) -> str:
            return super().sign("b/a" if object_key == "a" else object_key, expires_at=expires_at)

    with pytest.raises(AssertionError, match=r"gave the same URL .* for 'b/a' and 'a'"):
        check_signer(Aliasing(), keys=["b/a", "a"])


def test_signing_error_for_a_hard_key_names_the_key() -> None:
    class NoEmoji(GoodSigner):
        def sign(self, object_key: str, *, expires_at: int) -> str:
            if any(ord(char) > 0xFFFF for char in object_key):
                raise SigningError("no emoji")
            return super().sign(object_key, expires_at=expires_at)

    with pytest.raises(
        AssertionError,
        match=r"NoEmoji\.sign\('stickers/😀 party 🎉\.gif'\) raised SigningError\('no emoji'\) "
        r"for a key with an emoji: .*check_signer\(signer, keys=\[\.\.\.\]\)",
    ):
        check_signer(NoEmoji())


def test_other_exceptions_must_be_signing_errors() -> None:
    class Crashes(GoodSigner):
        def sign(self, object_key: str, *, expires_at: int) -> str:
            raise KeyError(object_key)

    with pytest.raises(AssertionError, match=r"raised KeyError.*raise SigningError"):
        check_signer(Crashes())


def test_url_that_is_not_http_fails() -> None:
    class Ftp(GoodSigner):
        def url_prefix(self, object_key: str) -> str | None:
            return None

        def sign(self, object_key: str, *, expires_at: int) -> str:
            return "ftp" + super().sign(object_key, expires_at=expires_at)[len("https") :]

    with pytest.raises(AssertionError, match=r"'ftp://cdn\.test/avatar\.png.*not an http\(s\) URL"):
        check_signer(Ftp())


@pytest.mark.parametrize(
    ("attr", "value", "expected"),
    [
        ("name", "", r"Bad\.name is '': set name to a non-empty str"),
        ("stable", 1, r"Bad\.stable is 1: set it to True when"),
        ("max_url_ttl", 0, r"Bad\.max_url_ttl is 0: set it to the longest URL lifetime"),
        ("max_url_ttl", 3600.0, r"Bad\.max_url_ttl is 3600\.0:"),
    ],
)
def test_bad_attributes_fail(attr: str, value: object, expected: str) -> None:
    class Bad(GoodSigner):
        pass

    setattr(Bad, attr, value)
    with pytest.raises(AssertionError, match=expected):
        check_signer(Bad())


def test_not_a_signer_fails() -> None:
    with pytest.raises(AssertionError, match=r"takes a sqla_signed_urls\.signers\.Signer, got str"):
        check_signer("https://cdn.test/")  # type: ignore[arg-type]


def test_bad_keys_argument_is_a_usage_error() -> None:
    with pytest.raises(TypeError, match="not one str"):
        check_signer(FakeSigner(), keys="avatar.png")
    with pytest.raises(ValueError, match="at least one object key"):
        check_signer(FakeSigner(), keys=[])


def test_signer_failing_when_the_clock_moves_fails() -> None:
    started = time.time()

    class ReadsTheClock(GoodSigner):
        def sign(self, object_key: str, *, expires_at: int) -> str:
            if time.time() > started + 1000:
                raise SigningError("credentials expired")
            return super().sign(object_key, expires_at=expires_at)

    with pytest.raises(
        AssertionError, match=r"with the clock 3601 s later and the same expires_at, 3599 s ahead"
    ):
        check_signer(ReadsTheClock(), keys=["avatar.png"])


def test_signer_that_ignores_signed_at_fails() -> None:
    class V4SignedNow(OSSSigner):
        def sign(self, object_key: str, *, expires_at: int, signed_at: int | None = None) -> str:
            now = int(dt.datetime.now(dt.timezone.utc).timestamp())  # not the signed_at given
            return super().sign(object_key, expires_at=expires_at, signed_at=now)

    auth = oss2.make_auth(KEY_ID, KEY_SECRET, oss2.AUTH_VERSION_4)
    signer = V4SignedNow(oss2.Bucket(auth, ENDPOINT, "campus-forum", region=REGION))
    with pytest.raises(
        AssertionError,
        match=r"V4SignedNow\.takes_signed_at is True, but .*x-oss-date=\d{8}T\d{6}Z is not "
        r"signed_at .*write signed_at as the signing time",
    ):
        check_signer(signer)
