"""``OSSSigner`` with V1 credentials: URLs byte for byte what oss2's ``bucket.sign_url("GET",
...)`` gives (``Auth``, ``make_auth(..., "v1")``, ``StsAuth`` V1, ``ProviderAuth`` with any
credentials provider; every kind of endpoint; hard and generated keys; response overrides;
extra ``params`` such as ``x-oss-process``, for V4 too), signed by our own code, which reads no
clock: ``Expires`` is the ``expires_at`` given.

oss2 computes ``Expires`` as ``int(time.time()) + expires`` through the ``time`` module it
imported in ``oss2.auth``; the tests replace that module there with a clock frozen at ``NOW``
(a fraction of a second past it, as oss2 truncates) and ask oss2 for ``expires_at - NOW``.
Its V4 signing time (``datetime.utcnow()`` there) is frozen at ``NOW`` too.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import oss2
import oss2.auth
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oss2.credentials import Credentials, CredentialsProvider, StaticCredentialsProvider

from sqla_signed_urls import SigningError
from sqla_signed_urls.signers import OSSSigner, _v4
from sqla_signed_urls.testing import check_signer

KEY_ID = "LTAI5tExampleKeyId"
KEY_SECRET = "oss-v1-example-secret-0123456789"
TOKEN = "CAIS/sts+token==example"
ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"
NOW = 1714564800  # 2024-05-01T12:00:00Z
LIFETIME = 14400

HARD_KEYS = [
    "avatar.png",
    "avatars/2024/05/7.png",
    "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p.txt",
    "posts/my holiday photo.jpg",
    "posts/a+b c.png",
    "reports/100%.pdf",
    "reports/50%25 off%2F.pdf",
    "a%2Bb%3D%26.txt",
    "drafts/~draft~.txt",
    "~",
    "notes/#1 todo.txt",
    "faq/why?.md",
    "faq/?x=1&y=2",
    "docs/q&a=yes&x=1.txt",
    "a=b",
    "files/résumé naïve.pdf",
    "用户/头像/张三的照片.png",
    "stickers/😀 party 🎉.gif",
    "Ωmega/Ünïcödé/ñ.txt",
    "/leading/slash.png",
    "uploads//double-slash.png",
    "folder/",
    "semi;colon,comma:colon@at!$'()*.txt",
    'quotes"<>[]{}|^`\\.txt',
    "tab\tnew\nline\rreturn.txt",
    "control\x01\x7fchars.bin",
    " leading and trailing spaces ",
    "k" * 1023,  # the longest key OSS takes
    "目" * 341,  # 1023 bytes of UTF-8
    "😀" * 255,  # 1020 bytes of UTF-8
    "deep/" * 200 + "x" * 23,  # 1023 bytes, 200 levels
]
DISPOSITION_5987 = (
    "attachment; filename=\"resume 2024.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%202024.pdf"
)
OVERRIDES: list[dict[str, str]] = [
    {},
    {"response-content-disposition": DISPOSITION_5987},
    {"response-content-disposition": 'attachment; filename="résumé 张三 😀.pdf"'},
    {"response-content-type": "image/png; charset=utf-8"},
    {"response-content-disposition": "inline", "response-content-type": "text/plain+x"},
    {"response-content-disposition": "a&b=c?d#e%f", "response-content-type": "x/y; q=1&r=2"},
]


class _FrozenTime:
    """What oss2.auth reads as ``time``: the clock a fraction of a second past ``NOW``."""

    @staticmethod
    def time() -> float:
        return NOW + 0.875


class _FrozenDatetime(dt.datetime):
    @classmethod
    def utcnow(cls) -> Any:
        return dt.datetime(2024, 5, 1, 12, 0, 0)


@pytest.fixture(autouse=True)
def _oss2_clock() -> Iterator[None]:
    assert _FrozenDatetime.utcnow().replace(tzinfo=dt.timezone.utc).timestamp() == NOW
    with (
        mock.patch.object(oss2.auth, "time", _FrozenTime),
        mock.patch.object(oss2.auth, "datetime", _FrozenDatetime),
    ):
        yield


def v1_auths() -> list[tuple[str, Any]]:
    return [
        ("Auth", oss2.Auth(KEY_ID, KEY_SECRET)),
        ("make_auth", oss2.make_auth(KEY_ID, KEY_SECRET, oss2.AUTH_VERSION_1)),
        ("StsAuth", oss2.StsAuth(KEY_ID, KEY_SECRET, TOKEN)),
        ("StsAuth-v1", oss2.StsAuth("STS.key", "s" * 100, "tok en&x=1", oss2.AUTH_VERSION_1)),
        (
            "ProviderAuth",
            oss2.ProviderAuth(StaticCredentialsProvider("LTAI key/id+", "sec ret", "tok/en+=")),
        ),
        ("ProviderAuth-no-token", oss2.ProviderAuth(StaticCredentialsProvider("id", "秘密"))),
    ]


#: Every kind of endpoint oss2 makes URLs for: (label, endpoint, bucket name, Bucket options).
ENDPOINTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("virtual", ENDPOINT, "campus-forum", {}),
    ("http", "http://oss-cn-beijing.aliyuncs.com", "campus-forum", {}),
    ("no-scheme", "oss-cn-shanghai.aliyuncs.com", "campus-forum", {}),
    ("port", "https://oss-cn-hangzhou.aliyuncs.com:8443", "campus-forum", {}),
    ("cname", "https://files.example.com", "campus-forum", {"is_cname": True}),
    ("cname-http-port", "http://cdn.example.com:8080", "campus-forum", {"is_cname": True}),
    ("path", ENDPOINT, "campus-forum", {"is_path_style": True}),
    ("ip", "http://127.0.0.1:8080", "campus-forum", {}),
    ("localhost", "http://localhost:9000", "campus-forum", {}),
]


def buckets() -> list[tuple[str, Any]]:
    return [
        (f"{auth_name}-{where}", oss2.Bucket(auth, endpoint, name, **options))
        for auth_name, auth in v1_auths()
        for where, endpoint, name, options in ENDPOINTS
    ]


BUCKETS = buckets()


def oss2_url(
    bucket: Any,
    key: str,
    overrides: dict[str, str],
    lifetime: int = LIFETIME,
    params: Sequence[tuple[str, str]] = (),
) -> str:
    url: str = bucket.sign_url("GET", key, lifetime, params={**overrides, **dict(params)} or None)
    return url


def our_url(
    signer: OSSSigner,
    key: str,
    overrides: dict[str, str],
    lifetime: int = LIFETIME,
    params: Sequence[tuple[str, str]] = (),
) -> str:
    return signer.sign_with(
        key,
        expires_at=NOW + lifetime,
        signed_at=NOW if signer.takes_signed_at else None,
        response_content_disposition=overrides.get("response-content-disposition"),
        response_content_type=overrides.get("response-content-type"),
        params=params,
    )


def own_signer(bucket: Any) -> OSSSigner:
    """An ``OSSSigner`` that signs with our own code: oss2's ``sign_url`` is never called."""
    signer = OSSSigner(bucket)
    assert signer.version == "v1" and signer.stable and not signer.takes_signed_at
    assert signer.max_url_ttl is None
    assert signer._signing[1] is not None
    return signer


@pytest.fixture
def v1_bucket() -> Any:
    return oss2.Bucket(oss2.Auth(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum")


# -- byte identity with oss2 --------------------------------------------------------------------


@pytest.mark.parametrize(("label", "bucket"), BUCKETS, ids=[label for label, _ in BUCKETS])
def test_hard_keys_match_oss2(label: str, bucket: Any) -> None:
    signer = own_signer(bucket)
    with mock.patch.object(bucket, "sign_url", side_effect=AssertionError("oss2 was called")):
        ours = {
            (key, i): our_url(signer, key, overrides)
            for key in HARD_KEYS
            for i, overrides in enumerate(OVERRIDES)
        }
    for (key, i), url in ours.items():
        assert url == oss2_url(bucket, key, OVERRIDES[i]), (key, OVERRIDES[i])


_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60)
_keys = _text.filter(lambda key: key.strip() and key not in (".", "..") and key[0] != "?")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=_keys,
    disposition=st.none() | _text,
    content_type=st.none() | _text,
    lifetime=st.integers(-(10**6), 10**10),
)
def test_generated_keys_match_oss2(
    key: str, disposition: str | None, content_type: str | None, lifetime: int
) -> None:
    overrides = {
        name: value
        for name, value in (
            ("response-content-disposition", disposition),
            ("response-content-type", content_type),
        )
        if value is not None
    }
    for _, bucket in BUCKETS[::4]:  # each auth, on several kinds of endpoint
        signer = OSSSigner(bucket)
        assert our_url(signer, key, overrides, lifetime) == oss2_url(
            bucket, key, overrides, lifetime
        )


def _credential(max_size: int) -> st.SearchStrategy[str]:
    """Generated credentials. The suite's log scan treats every secret given to oss2 as one
    to look for in log lines, and Hypothesis also draws strings from the package's own source
    (``"REDIS_URL"``); those of scan length get a prefix no log line holds."""
    return st.text(st.characters(codec="utf-8"), max_size=max_size).map(
        lambda text: text if len(text) < 8 else f"generated-credential:{text}"
    )


@settings(max_examples=150, deadline=None)
@given(
    key_id=st.text(st.characters(codec="utf-8"), max_size=30),
    secret=_credential(120),
    token=_credential(60),
)
def test_generated_credentials_match_oss2(key_id: str, secret: str, token: str) -> None:
    auth = oss2.ProviderAuth(StaticCredentialsProvider(key_id, secret, token))
    bucket = oss2.Bucket(auth, ENDPOINT, "campus-forum")
    signer = own_signer(bucket)
    for overrides in OVERRIDES[:2]:
        assert our_url(signer, "a b/ü.png", overrides) == oss2_url(bucket, "a b/ü.png", overrides)


def test_keys_beginning_with_a_question_mark_match_oss2_when_the_bucket_allows_them() -> None:
    auth = oss2.Auth(KEY_ID, KEY_SECRET)
    bucket = oss2.Bucket(auth, ENDPOINT, "campus-forum", is_verify_object_strict=False)
    signer = own_signer(bucket)
    for key in ("?begins-with-question-mark", "?", "?a=1&b"):
        assert our_url(signer, key, {}) == oss2_url(bucket, key, {})
    strict = OSSSigner(oss2.Bucket(auth, ENDPOINT, "campus-forum"))
    with pytest.raises(SigningError, match="begins with '\\?'"):
        strict.sign("?a", expires_at=NOW + 60)


# -- what the URL holds -------------------------------------------------------------------------


def test_url_holds_the_absolute_expiry_in_oss2_order(v1_bucket: Any) -> None:
    url = own_signer(v1_bucket).sign("a b.png", expires_at=NOW + 90)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        "https://campus-forum.oss-cn-hangzhou.aliyuncs.com/a%20b.png"
    )
    assert [name for name, _ in parse_qsl(parts.query)] == [
        "OSSAccessKeyId",
        "Expires",
        "Signature",
    ]
    assert dict(parse_qsl(parts.query))["Expires"] == str(NOW + 90)


def test_sts_token_and_overrides_come_first_as_oss2_puts_them() -> None:
    bucket = oss2.Bucket(oss2.StsAuth(KEY_ID, KEY_SECRET, TOKEN), ENDPOINT, "campus-forum")
    url = own_signer(bucket).sign_with(
        "a.png",
        expires_at=NOW + 60,
        response_content_disposition=DISPOSITION_5987,
        response_content_type="text/plain",
    )
    query = parse_qsl(urlsplit(url).query)
    assert [name for name, _ in query] == [
        "response-content-disposition",
        "response-content-type",
        "security-token",
        "OSSAccessKeyId",
        "Expires",
        "Signature",
    ]
    assert dict(query)["response-content-disposition"] == DISPOSITION_5987
    assert dict(query)["security-token"] == TOKEN


def test_no_clock_is_read(v1_bucket: Any) -> None:
    signer = own_signer(v1_bucket)
    expected = oss2_url(v1_bucket, "a b.png", OVERRIDES[1])
    with mock.patch("time.time", side_effect=AssertionError("the clock was read")):
        assert our_url(signer, "a b.png", OVERRIDES[1]) == expected


def test_same_inputs_same_url_whatever_the_clock(v1_bucket: Any) -> None:
    signer = own_signer(v1_bucket)
    expires_at = int(time.time()) + 3600
    first = signer.sign("a.png", expires_at=expires_at)
    with mock.patch("time.time", return_value=time.time() + 3000):
        assert signer.sign("a.png", expires_at=expires_at) == first


def test_expires_at_must_be_whole_seconds(v1_bucket: Any) -> None:
    signer = own_signer(v1_bucket)
    assert signer.sign("a.png", expires_at=float(NOW + 60)) == signer.sign(  # type: ignore[arg-type]
        "a.png", expires_at=NOW + 60
    )
    for bad in (NOW + 0.5, True, "1714564860", None):
        with pytest.raises(SigningError, match=r"expires_at=.*whole Unix seconds"):
            signer.sign("a.png", expires_at=bad)  # type: ignore[arg-type]


# -- credentials --------------------------------------------------------------------------------


class _Rotating(CredentialsProvider):  # type: ignore[misc]
    def __init__(self) -> None:
        self.current = Credentials("LTAIfirst", "first-secret", "first-token")

    def get_credentials(self) -> Any:
        return self.current


def test_a_refreshing_provider_is_read_on_every_signing() -> None:
    provider = _Rotating()
    bucket = oss2.Bucket(oss2.ProviderAuth(provider), ENDPOINT, "campus-forum")
    signer = own_signer(bucket)
    first = our_url(signer, "a.png", {})
    assert first == oss2_url(bucket, "a.png", {})
    provider.current = Credentials("LTAIsecond", "second-secret", "")
    second = our_url(signer, "a.png", {})
    assert second == oss2_url(bucket, "a.png", {})
    assert "OSSAccessKeyId=LTAIsecond&" in second and "security-token" not in second
    assert "OSSAccessKeyId=LTAIfirst&" in first and "security-token=first-token&" in first
    provider.current = Credentials("LTAIsecond", "third-secret", "")  # same id, new secret
    assert our_url(signer, "a.png", {}) == oss2_url(bucket, "a.png", {}) != second


def test_a_new_auth_given_to_the_bucket_is_used() -> None:
    """oss2 advises giving the bucket a new ``StsAuth`` before STS credentials expire."""
    bucket = oss2.Bucket(oss2.StsAuth("STS.old", "old-secret", "old-token"), ENDPOINT, "cf-1")
    signer = own_signer(bucket)
    old = our_url(signer, "a.png", {})
    bucket.auth = oss2.StsAuth("STS.new", "new-secret", "new-token")
    new = our_url(signer, "a.png", {})
    assert new == oss2_url(bucket, "a.png", {}) != old
    assert signer._signing[1] is not None


def test_a_new_auth_of_another_version_is_signed_by_oss2(v1_bucket: Any) -> None:
    signer = own_signer(v1_bucket)
    v1_bucket.auth = oss2.AuthV4(KEY_ID, KEY_SECRET)
    v1_bucket.region = "cn-hangzhou"
    url = signer.sign("a.png", expires_at=int(time.time()) + 600)
    assert "x-oss-signature-version=OSS4-HMAC-SHA256" in url
    assert signer._signing[1] is None


def test_a_broken_provider_gives_signing_error() -> None:
    class Broken(CredentialsProvider):  # type: ignore[misc]
        def get_credentials(self) -> Any:
            raise RuntimeError("the RAM role endpoint is down")

    bucket = oss2.Bucket(oss2.ProviderAuth(Broken()), ENDPOINT, "campus-forum")
    with pytest.raises(SigningError, match="could not read the OSS credentials"):
        own_signer(bucket).sign("a.png", expires_at=NOW + 60)


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        (Credentials("id", None, ""), "secret is a NoneType"),
        (Credentials("id", "bad\ud800secret", ""), "secret is not valid Unicode"),
        (Credentials("id", "secret", b"token"), "token is a bytes"),
        (Credentials("bad\ud800id", "secret", ""), "cannot be quoted"),
    ],
)
def test_unusable_credentials_give_signing_error(credentials: Any, message: str) -> None:
    provider = _Rotating()
    provider.current = credentials
    bucket = oss2.Bucket(oss2.ProviderAuth(provider), ENDPOINT, "campus-forum")
    with pytest.raises(SigningError, match=message):
        own_signer(bucket).sign("a.png", expires_at=NOW + 60)


# -- what stays with oss2 -----------------------------------------------------------------------


class _CustomV1(oss2.Auth):  # type: ignore[misc]
    def _sign_url(self, req: Any, bucket_name: str, key: str, expires: int) -> str:
        url: str = super()._sign_url(req, bucket_name, key, expires)
        return url + "&custom=1"


class _CustomSts(oss2.StsAuth):  # type: ignore[misc]
    def _sign_url(self, req: Any, bucket_name: str, key: str, expires: int) -> str:
        url: str = super()._sign_url(req, bucket_name, key, expires)
        return url + "&custom=1"


class _CustomBucket(oss2.Bucket):  # type: ignore[misc]
    def sign_url(self, *args: Any, **kwargs: Any) -> str:
        return str(super().sign_url(*args, **kwargs)) + "&custom=1"


@pytest.mark.parametrize(
    "bucket",
    [
        oss2.Bucket(_CustomV1(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum"),
        oss2.Bucket(_CustomSts(KEY_ID, KEY_SECRET, TOKEN), ENDPOINT, "campus-forum"),
        _CustomBucket(oss2.Auth(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum"),
    ],
    ids=["auth", "sts-auth", "bucket"],
)
def test_what_signs_in_a_way_of_its_own_is_signed_by_oss2(bucket: Any) -> None:
    signer = OSSSigner(bucket)
    assert signer._signing[1] is None
    assert signer.stable and not signer.takes_signed_at  # V1: the expiry is the only time
    with mock.patch("time.time", _FrozenTime.time):  # oss2 takes a lifetime from now
        url = our_url(signer, "a b.png", OVERRIDES[1])
    assert url.endswith("&custom=1")
    assert url == oss2_url(bucket, "a b.png", OVERRIDES[1])
    assert dict(parse_qsl(urlsplit(url).query))["Expires"] == str(NOW + LIFETIME)


def test_anonymous_auth_is_left_to_oss2() -> None:
    bucket = oss2.Bucket(oss2.AnonymousAuth(), ENDPOINT, "campus-forum")
    signer = OSSSigner(bucket)
    assert signer._signing[1] is None
    assert our_url(signer, "a b.png", OVERRIDES[3]) == oss2_url(bucket, "a b.png", OVERRIDES[3])


# -- prefixes, the contract and refused keys ----------------------------------------------------


@pytest.mark.parametrize(("label", "bucket"), BUCKETS, ids=[label for label, _ in BUCKETS])
def test_url_prefix_is_how_every_url_begins_and_nothing_else(label: str, bucket: Any) -> None:
    signer = own_signer(bucket)
    keys = [key for key in HARD_KEYS if len(key) < 100]
    assert signer.url_prefixes(keys) == [signer.url_prefix(key) for key in keys]
    for key in keys:
        url = our_url(signer, key, OVERRIDES[4])
        assert url.startswith(str(signer.url_prefix(key)))
        assert signer.url_is_for(url, key)
        assert unquote(urlsplit(url).path).endswith("/" + key)
        for other in keys:
            if other != key:
                assert not signer.url_is_for(url, other)
        assert not signer.url_is_for(url.replace(urlsplit(url).netloc, "evil.example"), key)


CONTRACT_BUCKETS = [
    (label, bucket) for label, bucket in BUCKETS if label.endswith(("virtual", "cname", "path"))
]


@pytest.mark.parametrize(
    ("label", "bucket"), CONTRACT_BUCKETS, ids=[label for label, _ in CONTRACT_BUCKETS]
)
def test_check_signer_passes(label: str, bucket: Any) -> None:
    check_signer(own_signer(bucket))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "non-empty str"),
        ("   ", "non-empty str"),
        (None, "non-empty str"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("k" * 1024, "1023 bytes"),
        ("目" * 341 + "x", "1023 bytes"),
        ("bad\ud800surrogate.png", "not valid Unicode"),
    ],
)
def test_bad_keys_raise_signing_error(key: Any, message: str, v1_bucket: Any) -> None:
    with pytest.raises(SigningError, match=message):
        own_signer(v1_bucket).sign(key, expires_at=NOW + 60)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"response_content_type": ""}, "response-content-type: expected a non-empty str"),
        ({"response_content_disposition": 7}, "response-content-disposition: expected"),
        ({"response_content_disposition": "a\ud800"}, "not valid Unicode"),
    ],
)
def test_bad_response_overrides_raise_signing_error(
    overrides: dict[str, Any], message: str, v1_bucket: Any
) -> None:
    with pytest.raises(SigningError, match=message):
        own_signer(v1_bucket).sign_with("a.png", expires_at=NOW + 60, **overrides)


def test_from_env_v1_signs_with_our_own_code() -> None:
    env = {
        "OSS_ACCESS_KEY_ID": KEY_ID,
        "OSS_ACCESS_KEY_SECRET": KEY_SECRET,
        "OSS_ENDPOINT": ENDPOINT,
        "OSS_BUCKET": "campus-forum",
        "OSS_SESSION_TOKEN": TOKEN,
    }
    signer = own_signer(OSSSigner.from_env(env).bucket)
    assert our_url(signer, "a.png", {}) == oss2_url(signer.bucket, "a.png", {})


# -- extra parameters (an image variant's x-oss-process), V1 and V4 ------------------------------

PARAMS: list[list[tuple[str, str]]] = [
    [("x-oss-process", "image/resize,w_128")],
    [("x-oss-process", "style/thumb"), ("utm source", "a b&c=d/é")],  # the second: unsigned in V1
    [("x-oss-traffic-limit", "819200"), ("versionId", "CAEQ+/=")],
    [("x-oss-process", "")],  # no value: the name alone, as oss2 writes it
    [("zz-名", "值 😀"), ("A-upper", "1"), ("%already", "%41")],
]


def v4_buckets() -> list[tuple[str, Any]]:
    auths = [
        ("AuthV4", oss2.AuthV4(KEY_ID, KEY_SECRET)),
        ("StsAuth-v4", oss2.StsAuth(KEY_ID, KEY_SECRET, TOKEN, auth_version=oss2.AUTH_VERSION_4)),
    ]
    return [
        (f"{auth_name}-{where}", oss2.Bucket(auth, endpoint, name, region="cn-hangzhou", **options))
        for auth_name, auth in auths
        for where, endpoint, name, options in ENDPOINTS[::2]
    ]


PARAM_BUCKETS = BUCKETS[::3] + v4_buckets()


@pytest.mark.parametrize(
    ("label", "bucket"), PARAM_BUCKETS, ids=[label for label, _ in PARAM_BUCKETS]
)
def test_params_match_oss2(label: str, bucket: Any) -> None:
    signer = OSSSigner(bucket)
    assert signer._signing[1] is not None
    for key in HARD_KEYS[::3]:
        for overrides in OVERRIDES[::2]:
            for params in PARAMS:
                assert our_url(signer, key, overrides, params=params) == oss2_url(
                    bucket, key, overrides, params=params
                ), (key, overrides, params)


_param_names = st.sampled_from(
    ["x-oss-process", "versionId", "response-content-language", "response-expires", "acl"]
) | st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(
    lambda name: (
        name.lower() not in {"ossaccesskeyid", "expires", "signature", "security-token"}
        and not name.lower().startswith("x-oss-")
        and not name.startswith("response-content-")
    )
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=_keys,
    disposition=st.none() | _text,
    params=st.lists(
        st.tuples(_param_names, st.text(st.characters(codec="utf-8"), max_size=20)),
        min_size=1,
        max_size=4,
        unique_by=lambda pair: pair[0],
    ),
)
def test_generated_params_match_oss2(
    key: str, disposition: str | None, params: list[tuple[str, str]]
) -> None:
    overrides = {} if disposition is None else {"response-content-disposition": disposition}
    for _, bucket in PARAM_BUCKETS[::2]:
        signer = OSSSigner(bucket)
        assert our_url(signer, key, overrides, params=params) == oss2_url(
            bucket, key, overrides, params=params
        )


def test_a_processed_image_url(v1_bucket: Any) -> None:
    url = own_signer(v1_bucket).sign_with(
        "photos/cat.jpg", expires_at=NOW + 60, params=[("x-oss-process", "image/resize,w_128")]
    )
    assert url.startswith(
        "https://campus-forum.oss-cn-hangzhou.aliyuncs.com/photos%2Fcat.jpg?"
        "x-oss-process=image%2Fresize%2Cw_128&OSSAccessKeyId="
    )
    assert url == oss2_url(
        v1_bucket, "photos/cat.jpg", {}, 60, params=[("x-oss-process", "image/resize,w_128")]
    )


def test_params_reach_oss2_when_it_signs() -> None:
    bucket = oss2.Bucket(_CustomV1(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum")
    params = [("x-oss-process", "image/resize,w_64"), ("other", "1")]
    with mock.patch("time.time", _FrozenTime.time):
        url = our_url(OSSSigner(bucket), "a.png", OVERRIDES[1], params=params)
    assert url == oss2_url(bucket, "a.png", OVERRIDES[1], params=params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("Expires", "1")], "'Expires' is a parameter OSS signing writes itself"),
        ([("signature", "x")], "'signature' is a parameter OSS signing writes itself"),
        ([("OSSAccessKeyId", "x")], "writes itself"),
        ([("security-token", "x")], "writes itself"),
        ([("x-oss-date", "x")], "writes itself"),
        ([("X-OSS-Signature", "x")], "writes itself"),
        ([("a", "1"), ("a", "2")], "'a' is given twice"),
        ([("response-content-type", "x")], "'response-content-type' is given twice"),
        ([("", "x")], "non-empty str name"),
        ([("a", None)], "non-empty str name and a str value"),
        ([("a",)], "expected \\(name, value\\) pairs"),
        ([("a", "b\ud800")], "not valid Unicode"),
    ],
)
def test_bad_params_raise_signing_error(params: list[Any], message: str, v1_bucket: Any) -> None:
    with pytest.raises(SigningError, match=message):
        own_signer(v1_bucket).sign_with(
            "a.png", expires_at=NOW + 60, response_content_type="text/plain", params=params
        )


@settings(max_examples=300, deadline=None)
@given(value=st.text(st.characters(codec="utf-8"), max_size=40) | st.binary(max_size=20))
def test_quote_param_is_urllib_quote(value: str | bytes) -> None:
    assert _v4.quote_param(value) == quote(value, safe="")  # type: ignore[arg-type]
