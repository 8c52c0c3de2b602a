"""``OSSSigner`` with V4 credentials: URLs byte for byte what oss2's ``bucket.sign_url("GET",
...)`` gives at the same signing time (AuthV4, STS tokens, credential providers, every kind of
endpoint, hard and generated keys, response overrides), signed by our own code at the time
``SignedURLs`` chooses; V1 as before.

oss2 reads its clock through ``datetime.utcnow()`` in ``oss2.auth``; the tests freeze it at
``SIGNED_AT`` and sign with ``signed_at=SIGNED_AT``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

import fakeredis
import oss2
import oss2.auth
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oss2.credentials import Credentials, CredentialsProvider, StaticCredentialsProvider

from sqla_signed_urls import ConfigurationError, SignedURLs, SigningError
from sqla_signed_urls.signers import OSSSigner
from sqla_signed_urls.testing import check_signer

KEY_ID = "LTAI5tExampleKeyId"
KEY_SECRET = "oss-v4-example-secret-0123456789"
TOKEN = "CAIS/sts+token==example"
REGION = "cn-hangzhou"
ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"
SIGNED_AT = 1714564800  # 2024-05-01T12:00:00Z
LIFETIME = 14400
V4_MAX = 7 * 24 * 3600

HARD_KEYS = [
    "avatar.png",
    "avatars/2024/05/7.png",
    "posts/my holiday photo.jpg",
    "posts/a+b c.png",
    "reports/100%.pdf",
    "reports/50%25 off%2F.pdf",
    "drafts/~draft~.txt",
    "notes/#1 todo.txt",
    "faq/why?.md",
    "?begins-with-question-mark",
    "docs/q&a=yes&x=1.txt",
    "files/résumé naïve.pdf",
    "用户/头像/张三的照片.png",
    "stickers/😀 party 🎉.gif",
    "/leading/slash.png",
    "uploads//double-slash.png",
    "folder/",
    "semi;colon,comma:colon@at!$'()*.txt",
    'quotes"<>[]{}|^`.txt',
    "tab\tnew\nline.txt",
    "k" * 1023,  # the longest key OSS takes
    "目" * 341,  # 1023 bytes of UTF-8
]
OVERRIDES: list[dict[str, str]] = [
    {},
    {"response-content-disposition": 'attachment; filename="résumé 2024.pdf"'},
    {"response-content-type": "image/png; charset=utf-8"},
    {"response-content-disposition": "inline", "response-content-type": "text/plain+x"},
]


class _FrozenDatetime(dt.datetime):
    @classmethod
    def utcnow(cls) -> Any:
        return dt.datetime(2024, 5, 1, 12, 0, 0)


@pytest.fixture(autouse=True)
def _oss2_clock() -> Iterator[None]:
    """oss2 signs at ``SIGNED_AT``."""
    assert _FrozenDatetime.utcnow().replace(tzinfo=dt.timezone.utc).timestamp() == SIGNED_AT
    with mock.patch.object(oss2.auth, "datetime", _FrozenDatetime):
        yield


def v4_auths() -> list[tuple[str, Any]]:
    return [
        ("AuthV4", oss2.AuthV4(KEY_ID, KEY_SECRET)),
        ("make_auth", oss2.make_auth(KEY_ID, KEY_SECRET, oss2.AUTH_VERSION_4)),
        ("StsAuth", oss2.StsAuth(KEY_ID, KEY_SECRET, TOKEN, auth_version=oss2.AUTH_VERSION_4)),
        (
            "ProviderAuthV4",
            oss2.ProviderAuthV4(StaticCredentialsProvider("LTAI key/id", "sec ret", "tok en")),
        ),
    ]


def buckets() -> list[tuple[str, Any]]:
    """V4 buckets on every kind of endpoint oss2 knows."""
    made = []
    for auth_name, auth in v4_auths():
        for where, endpoint, kwargs in (
            ("virtual", ENDPOINT, {}),
            ("http", "http://oss-cn-beijing.aliyuncs.com", {"region": "cn-beijing"}),
            ("cname", "https://files.example.com", {"is_cname": True}),
            ("path", ENDPOINT, {"is_path_style": True}),
            ("ip", "http://127.0.0.1:8080", {}),
            (
                "cloudbox",
                "https://cb-1.cn-hangzhou.oss-cloudbox.aliyuncs.com",
                {"cloudbox_id": "cb-1"},
            ),
        ):
            options = {"region": REGION, **kwargs}
            made.append(
                (f"{auth_name}-{where}", oss2.Bucket(auth, endpoint, "campus-forum", **options))
            )
    return made


BUCKETS = buckets()


def oss2_url(bucket: Any, key: str, overrides: dict[str, str], lifetime: int = LIFETIME) -> str:
    url: str = bucket.sign_url("GET", key, lifetime, params=dict(overrides) or None)
    return url


def our_url(
    signer: OSSSigner, key: str, overrides: dict[str, str], lifetime: int = LIFETIME
) -> str:
    return signer.sign_with(
        key,
        expires_at=SIGNED_AT + lifetime,
        signed_at=SIGNED_AT,
        response_content_disposition=overrides.get("response-content-disposition"),
        response_content_type=overrides.get("response-content-type"),
    )


# -- byte identity with oss2 --------------------------------------------------------------------


@pytest.mark.parametrize(("label", "bucket"), BUCKETS, ids=[label for label, _ in BUCKETS])
def test_hard_keys_match_oss2(label: str, bucket: Any) -> None:
    signer = OSSSigner(bucket)
    assert signer.version == "v4" and signer.stable and signer.takes_signed_at
    for key in HARD_KEYS:
        for overrides in OVERRIDES:
            assert our_url(signer, key, overrides) == oss2_url(bucket, key, overrides), key


_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(
    lambda key: key.strip() and key not in (".", "..")
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=_keys,
    content_type=st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
    lifetime=st.integers(1, V4_MAX),
)
def test_generated_keys_match_oss2(key: str, content_type: str | None, lifetime: int) -> None:
    overrides = {} if content_type is None else {"response-content-type": content_type}
    for _, bucket in BUCKETS[::5]:  # each auth, on several kinds of endpoint
        signer = OSSSigner(bucket)
        assert our_url(signer, key, overrides, lifetime) == oss2_url(
            bucket, key, overrides, lifetime
        )


def test_url_carries_signed_at_and_lives_until_expires_at() -> None:
    bucket = oss2.Bucket(oss2.AuthV4(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum", region=REGION)
    url = OSSSigner(bucket).sign("a.png", expires_at=SIGNED_AT + V4_MAX, signed_at=SIGNED_AT)
    query = parse_qs(urlsplit(url).query)
    assert query["x-oss-date"] == ["20240501T120000Z"]
    assert query["x-oss-expires"] == [str(V4_MAX)]
    assert query["x-oss-credential"] == [f"{KEY_ID}/20240501/{REGION}/oss/aliyun_v4_request"]
    assert url.startswith("https://campus-forum.oss-cn-hangzhou.aliyuncs.com/a.png?")


def test_without_signed_at_the_url_is_signed_now() -> None:
    bucket = oss2.Bucket(oss2.AuthV4(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum", region=REGION)
    with mock.patch("time.time", return_value=SIGNED_AT + 0.5):
        url = OSSSigner(bucket).sign("a b.png", expires_at=SIGNED_AT + 600)
    assert url == oss2_url(bucket, "a b.png", {}, 600)


@pytest.mark.parametrize(
    ("expires_at", "signed_at"),
    [(SIGNED_AT, SIGNED_AT), (SIGNED_AT - 5, SIGNED_AT), (SIGNED_AT + V4_MAX + 1, SIGNED_AT)],
)
def test_lifetimes_outside_one_second_to_seven_days_are_refused(
    expires_at: int, signed_at: int
) -> None:
    bucket = oss2.Bucket(oss2.AuthV4(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum", region=REGION)
    with pytest.raises(SigningError, match=r"V4 URLs live 1 \.\. 604800 s"):
        OSSSigner(bucket).sign("a.png", expires_at=expires_at, signed_at=signed_at)


def test_url_ttl_beyond_seven_days_is_a_configuration_error() -> None:
    bucket = oss2.Bucket(oss2.AuthV4(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum", region=REGION)
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    with pytest.raises(ConfigurationError, match="url_ttl=604801"):
        SignedURLs(OSSSigner(bucket), redis=redis, url_ttl=V4_MAX + 1)


# -- credentials --------------------------------------------------------------------------------


def test_a_refreshing_provider_is_read_on_every_signing() -> None:
    class Rotating(CredentialsProvider):  # type: ignore[misc]
        def __init__(self) -> None:
            self.current = Credentials("LTAIfirst", "first-secret", "first-token")

        def get_credentials(self) -> Any:
            return self.current

    provider = Rotating()
    bucket = oss2.Bucket(oss2.ProviderAuthV4(provider), ENDPOINT, "campus-forum", region=REGION)
    signer = OSSSigner(bucket)
    first = our_url(signer, "a.png", {})
    assert first == oss2_url(bucket, "a.png", {})
    provider.current = Credentials("LTAIsecond", "second-secret", "")
    second = our_url(signer, "a.png", {})
    assert second == oss2_url(bucket, "a.png", {})
    assert "LTAIsecond%2F" in second and "security-token" not in second
    assert "LTAIfirst%2F" in first and "x-oss-security-token=first-token" in first


def test_a_broken_provider_gives_signing_error() -> None:
    class Broken(CredentialsProvider):  # type: ignore[misc]
        def get_credentials(self) -> Any:
            raise RuntimeError("the RAM role endpoint is down")

    bucket = oss2.Bucket(oss2.ProviderAuthV4(Broken()), ENDPOINT, "campus-forum", region=REGION)
    with pytest.raises(SigningError, match="could not read the OSS credentials"):
        OSSSigner(bucket).sign("a.png", expires_at=SIGNED_AT + 60, signed_at=SIGNED_AT)


# -- what stays with oss2 -----------------------------------------------------------------------


def test_v4_without_a_region_is_a_configuration_error() -> None:
    bucket = oss2.Bucket(oss2.AuthV4(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum")
    with pytest.raises(ConfigurationError, match="region='cn-hangzhou'"):
        OSSSigner(bucket)


def test_an_auth_of_its_own_kind_is_signed_by_oss2_and_not_stable() -> None:
    class CustomV4(oss2.AuthV4):  # type: ignore[misc]
        def _sign_url(self, req: Any, bucket_name: str, key: str, expires: int, **kw: Any) -> str:
            url: str = super()._sign_url(req, bucket_name, key, expires, **kw)
            return url + "&custom=1"

    bucket = oss2.Bucket(CustomV4(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum", region=REGION)
    signer = OSSSigner(bucket)
    assert not signer.stable and not signer.takes_signed_at
    assert signer.max_url_ttl == V4_MAX
    url = signer.sign("a.png", expires_at=int(time.time()) + 600)
    assert url.endswith("&custom=1")
    check_signer(signer)


def test_v1_is_signed_by_oss2_as_before() -> None:
    bucket = oss2.Bucket(oss2.Auth(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum")
    signer = OSSSigner(bucket)
    assert signer.stable and not signer.takes_signed_at
    expires_at = int(time.time()) + 3600
    url = signer.sign_with(
        "a b.png", expires_at=expires_at, response_content_disposition="attachment"
    )
    query = parse_qs(urlsplit(url).query)
    assert query["Expires"] == [str(expires_at)]
    assert query["response-content-disposition"] == ["attachment"]
    assert url == signer.sign_with(
        "a b.png", expires_at=expires_at, response_content_disposition="attachment"
    )


# -- prefixes, the contract and refused keys ----------------------------------------------------


@pytest.mark.parametrize(("label", "bucket"), BUCKETS[:6], ids=[label for label, _ in BUCKETS[:6]])
def test_url_prefix_is_how_every_url_begins_and_nothing_else(label: str, bucket: Any) -> None:
    signer = OSSSigner(bucket)
    keys = [key for key in HARD_KEYS if len(key) < 100]
    assert signer.url_prefixes(keys) == [signer.url_prefix(key) for key in keys]
    for key in keys:
        url = our_url(signer, key, {})
        assert url.startswith(str(signer.url_prefix(key)))
        assert unquote(urlsplit(url).path).endswith("/" + key)
        for other in keys:
            if other != key:
                assert not signer.url_is_for(url, other)
        assert not signer.url_is_for(url.replace(urlsplit(url).netloc, "evil.example"), key)


@pytest.mark.parametrize("auth", [auth for _, auth in v4_auths()], ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("cname", [False, True])
def test_check_signer_passes(auth: Any, cname: bool) -> None:
    endpoint = "https://files.example.com" if cname else ENDPOINT
    bucket = oss2.Bucket(auth, endpoint, "campus-forum", region=REGION, is_cname=cname)
    check_signer(OSSSigner(bucket))


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
def test_bad_keys_raise_signing_error(key: Any, message: str) -> None:
    bucket = oss2.Bucket(oss2.AuthV4(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum", region=REGION)
    with pytest.raises(SigningError, match=message):
        OSSSigner(bucket).sign(key, expires_at=SIGNED_AT + 60, signed_at=SIGNED_AT)


def test_bad_response_overrides_raise_signing_error() -> None:
    bucket = oss2.Bucket(oss2.AuthV4(KEY_ID, KEY_SECRET), ENDPOINT, "campus-forum", region=REGION)
    with pytest.raises(SigningError, match="response-content-type"):
        OSSSigner(bucket).sign_with(
            "a.png", expires_at=SIGNED_AT + 60, signed_at=SIGNED_AT, response_content_type=""
        )
