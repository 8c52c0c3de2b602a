"""``S3Signer``: URLs byte for byte what botocore's ``generate_presigned_url("get_object")``
gives (every addressing style, AWS and custom endpoints, two regions, session tokens, response
overrides, hard and generated keys), credentials that refresh, ``from_env``, the URL prefix, and
the keys and settings it refuses.

botocore reads its clock through ``botocore.auth.get_current_datetime``; the tests freeze it at
``SIGNED_AT`` and sign with ``signed_at=SIGNED_AT``. No S3-compatible server that checks presigned
signatures is available to the tests, so identity with botocore is the proof that stores accept
the URLs.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock
from urllib.parse import parse_qs, quote, unquote, urlsplit

import botocore.session
import fakeredis
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import (
    Credentials,
    EnvProvider,
    ReadOnlyCredentials,
    RefreshableCredentials,
)
from botocore.utils import percent_encode_sequence
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqla_signed_urls import ConfigurationError, SignedURLs, SigningError
from sqla_signed_urls.signers import S3Signer
from sqla_signed_urls.testing import check_signer

REPO = Path(__file__).resolve().parents[2]
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDH+test/session+token=="
SIGNED_AT = 1714564800  # 2024-05-01T12:00:00Z
LIFETIME = 14400
R2 = "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com"
MINIO = "http://127.0.0.1:9000"
DISPOSITION = "attachment; filename=\"résumé 2024.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9"

#: Keys every signer must get right: what makes each hard is in the key.
HARD_KEYS = [
    "avatar.png",
    "avatars/2024/05/7.png",
    "avatars/2024/05/7.png~1",
    "posts/my holiday photo.jpg",
    "posts/a+b c.png",
    "reports/100%.pdf",
    "reports/50%25 off%2F.pdf",
    "drafts/~draft~.txt",
    "notes/#1 todo.txt",
    "faq/why?.md",
    "docs/q&a=yes&x=1.txt",
    "files/résumé naïve.pdf",
    "用户/头像/张三的照片.png",
    "stickers/😀 party 🎉.gif",
    "/leading/slash.png",
    "uploads//double-slash.png",
    "folder/",
    "semi;colon,comma:colon@at!$'()*.txt",
    'quotes"<>[]{}|^`.txt',
    "back\\slash.txt",
    "tab\tnew\nline.txt",
    "  padded  ",
    "...dots.../..x",
    "k" * 1024,  # the longest key S3 takes, in ASCII
    "é" * 512,  # 1024 bytes of UTF-8
    "dir/" + "目" * 340,  # 1024 bytes, CJK
]


class Store(NamedTuple):
    """Where a bucket lives, as both botocore and S3Signer take it."""

    region: str
    endpoint_url: str | None
    addressing_style: str


STORES = [
    Store(region, endpoint, style)
    for region, endpoint in (
        ("us-east-1", None),
        ("eu-central-1", None),
        ("us-east-1", MINIO),
        ("auto", R2),
    )
    for style in ("auto", "virtual", "path")
]
BUCKETS = ["campus-forum", "media.campus.example"]


# -- botocore, frozen and isolated from the machine's AWS configuration -------------------------


@pytest.fixture(scope="module", autouse=True)
def _no_aws_config() -> Iterator[None]:
    """botocore reads environment variables and config files; the tests want its defaults."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("AWS_") or name.startswith("S3_"):
                patch.delenv(name)
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


_clients: dict[tuple[Store, str | None], Any] = {}


def boto_client(store: Store, token: str | None = None) -> Any:
    key = (store, token)
    if key not in _clients:
        _clients[key] = botocore.session.Session().create_client(
            "s3",
            region_name=store.region,
            endpoint_url=store.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            aws_session_token=token,
            config=Config(
                signature_version="s3v4", s3={"addressing_style": store.addressing_style}
            ),
        )
    return _clients[key]


def frozen_at(when: int) -> Any:
    """Freeze botocore's signing clock at ``when``."""
    moment = dt.datetime.fromtimestamp(when, dt.timezone.utc).replace(tzinfo=None)
    return mock.patch("botocore.auth.get_current_datetime", return_value=moment)


def botocore_url(
    store: Store,
    bucket: str,
    key: str,
    *,
    token: str | None = None,
    overrides: dict[str, str] | None = None,
    lifetime: int = LIFETIME,
) -> str:
    params = {"Bucket": bucket, "Key": key, **(overrides or {})}
    with frozen_at(SIGNED_AT):
        url: str = boto_client(store, token).generate_presigned_url(
            "get_object", Params=params, ExpiresIn=lifetime
        )
    return url


def signer_for(store: Store, bucket: str, token: str | None = None, **kwargs: Any) -> S3Signer:
    return S3Signer(
        bucket,
        region=store.region,
        endpoint_url=store.endpoint_url,
        addressing_style=store.addressing_style,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        session_token=token,
        **kwargs,
    )


def our_url(
    signer: S3Signer, key: str, overrides: dict[str, str] | None = None, lifetime: int = LIFETIME
) -> str:
    overrides = overrides or {}
    return signer.sign_with(
        key,
        expires_at=SIGNED_AT + lifetime,
        signed_at=SIGNED_AT,
        response_content_disposition=overrides.get("ResponseContentDisposition"),
        response_content_type=overrides.get("ResponseContentType"),
    )


OVERRIDES: list[dict[str, str]] = [
    {},
    {"ResponseContentDisposition": DISPOSITION},
    {"ResponseContentType": "image/png; charset=utf-8"},
    {"ResponseContentDisposition": "inline", "ResponseContentType": "text/plain+x"},
]


# -- byte identity with botocore --------------------------------------------------------------


@pytest.mark.parametrize("token", [None, TOKEN], ids=["keys", "session-token"])
@pytest.mark.parametrize("bucket", BUCKETS)
@pytest.mark.parametrize("store", STORES, ids=lambda s: f"{s.region}-{s.addressing_style}")
def test_hard_keys_match_botocore(store: Store, bucket: str, token: str | None) -> None:
    signer = signer_for(store, bucket, token)
    for key in HARD_KEYS:
        for overrides in OVERRIDES:
            assert our_url(signer, key, overrides) == botocore_url(
                store, bucket, key, token=token, overrides=overrides
            ), (key, overrides)


_key_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(
    lambda key: not any(part in (".", "..") for part in key.split("/"))
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    key=_key_text,
    disposition=st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
    lifetime=st.integers(1, 7 * 24 * 3600),
)
def test_generated_keys_match_botocore(key: str, disposition: str | None, lifetime: int) -> None:
    overrides = {} if disposition is None else {"ResponseContentDisposition": disposition}
    for store in STORES:
        for bucket, token in ((BUCKETS[0], None), (BUCKETS[1], TOKEN)):
            signer = signer_for(store, bucket, token)
            assert our_url(signer, key, overrides, lifetime) == botocore_url(
                store, bucket, key, token=token, overrides=overrides, lifetime=lifetime
            )


@pytest.mark.parametrize(
    ("store", "bucket", "base"),
    [
        # Presigned URLs of the commercial partition go to the global endpoint unless the
        # style is "virtual"; us-east-1 always does. The scope keeps the bucket's region.
        (Store("eu-central-1", None, "auto"), "forum", "https://forum.s3.amazonaws.com/"),
        (
            Store("eu-central-1", None, "virtual"),
            "forum",
            "https://forum.s3.eu-central-1.amazonaws.com/",
        ),
        (
            Store("eu-central-1", None, "path"),
            "forum",
            "https://s3.eu-central-1.amazonaws.com/forum/",
        ),
        (Store("us-east-1", None, "virtual"), "forum", "https://forum.s3.amazonaws.com/"),
        (Store("us-east-1", None, "path"), "forum", "https://s3.amazonaws.com/forum/"),
        # Dots in a bucket name would break the TLS certificate of bucket host names.
        (
            Store("eu-central-1", None, "virtual"),
            "a.b.c",
            "https://s3.eu-central-1.amazonaws.com/a.b.c/",
        ),
        # Legacy upper-case names are no host names; "auto" takes the global path then.
        (Store("eu-central-1", None, "auto"), "Forum", "https://s3.amazonaws.com/Forum/"),
        (
            Store("cn-north-1", None, "auto"),
            "forum",
            "https://forum.s3.cn-north-1.amazonaws.com.cn/",
        ),
        # A custom endpoint: the path unless "virtual"; never a host name on an IP address;
        # a dotted name as a host name over http only.
        (Store("auto", R2, "auto"), "forum", f"{R2}/forum/"),
        (Store("auto", R2, "virtual"), "forum", R2.replace("://", "://forum.") + "/"),
        (Store("auto", R2, "virtual"), "a.b.c", f"{R2}/a.b.c/"),
        (Store("us-east-1", MINIO, "virtual"), "forum", f"{MINIO}/forum/"),
        (
            Store("us-east-1", "http://minio.local:9000", "virtual"),
            "a.b.c",
            "http://a.b.c.minio.local:9000/",
        ),
        (
            Store("default", "https://ceph.example.com/s3/", "path"),
            "forum",
            "https://ceph.example.com/s3/forum/",
        ),
        (Store("us-east-1", "http://[::1]:9000", "virtual"), "forum", "http://[::1]:9000/forum/"),
    ],
)
def test_where_urls_point_follows_botocore(store: Store, bucket: str, base: str) -> None:
    signer = signer_for(store, bucket)
    url = our_url(signer, "a b.png")
    assert url == botocore_url(store, bucket, "a b.png")
    assert url.startswith(f"{base}a%20b.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&")
    assert f"%2F{store.region}%2Fs3%2Faws4_request&" in url
    assert signer.url_base == base


@pytest.mark.parametrize(
    "region", ["cn-northwest-1", "us-gov-west-1", "eusc-de-east-1", "ap-southeast-5", "mars-1"]
)
@pytest.mark.parametrize("style", ["auto", "virtual", "path"])
def test_other_partitions_and_unknown_regions_match_botocore(region: str, style: str) -> None:
    store = Store(region, None, style)
    for bucket in ("campus-forum", "a.b.c", "Legacy_Bucket"):
        for key in ("a.png", "用户/a b.png"):
            assert our_url(signer_for(store, bucket), key) == botocore_url(store, bucket, key)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://s3.example.com:8443",
        "https://S3.Example.COM:443/",
        "http://localhost",
        "http://10.0.0.7:80/prefix//a/../store",
        "https://storage.example.com/tenant/",
    ],
)
@pytest.mark.parametrize("style", ["auto", "virtual", "path"])
def test_endpoint_ports_and_paths_match_botocore(endpoint: str, style: str) -> None:
    store = Store("us-east-1", endpoint, style)
    for bucket in ("campus-forum", "a.b.c"):
        for key in ("a.png", "/x/ y", "k~ey+%"):
            assert our_url(signer_for(store, bucket, TOKEN), key) == botocore_url(
                store, bucket, key, token=TOKEN
            )


def test_sign_is_sign_with_without_overrides() -> None:
    signer = signer_for(STORES[0], "campus-forum")
    url = signer.sign("a.png", expires_at=SIGNED_AT + 60, signed_at=SIGNED_AT)
    assert url == our_url(signer, "a.png", lifetime=60)
    assert url == botocore_url(STORES[0], "campus-forum", "a.png", lifetime=60)


# -- signing times ------------------------------------------------------------------------------


def test_url_is_valid_until_exactly_expires_at() -> None:
    signer = signer_for(STORES[3], "campus-forum")
    url = signer.sign("a.png", expires_at=SIGNED_AT + 7 * 24 * 3600, signed_at=SIGNED_AT)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Date"] == ["20240501T120000Z"]
    assert query["X-Amz-Expires"] == [str(7 * 24 * 3600)]
    assert query["X-Amz-Credential"] == [f"{ACCESS_KEY}/20240501/eu-central-1/s3/aws4_request"]


def test_without_signed_at_the_url_is_signed_now() -> None:
    signer = signer_for(STORES[3], "campus-forum")
    with mock.patch("time.time", return_value=SIGNED_AT + 0.75):
        url = signer.sign("a.png", expires_at=SIGNED_AT + 3600)
    assert url == botocore_url(STORES[3], "campus-forum", "a.png", lifetime=3600)


@pytest.mark.parametrize(
    ("expires_at", "signed_at"),
    [
        (SIGNED_AT, SIGNED_AT),
        (SIGNED_AT - 1, SIGNED_AT),
        (SIGNED_AT + 7 * 24 * 3600 + 1, SIGNED_AT),
        (SIGNED_AT + 60.5, SIGNED_AT),
        (SIGNED_AT + 60, "now"),
    ],
)
def test_lifetimes_outside_one_second_to_seven_days_are_refused(
    expires_at: Any, signed_at: Any
) -> None:
    signer = signer_for(STORES[3], "campus-forum")
    with pytest.raises(SigningError, match=r"expires_at|signed_at"):
        signer.sign("a.png", expires_at=expires_at, signed_at=signed_at)


def test_url_ttl_beyond_seven_days_is_a_configuration_error() -> None:
    signer = signer_for(STORES[3], "campus-forum")
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    with pytest.raises(ConfigurationError, match=r"url_ttl=604801.*604800 seconds"):
        SignedURLs(signer, redis=redis, url_ttl=7 * 24 * 3600 + 1)
    SignedURLs(signer, redis=redis, url_ttl=7 * 24 * 3600).close()


# -- custom public domain -----------------------------------------------------------------------


def _botocore_signed(url: str, region: str, lifetime: int, token: str | None = None) -> str:
    """botocore's own SigV4 query signer applied to a GET of ``url`` (the path and query as
    the browser sends them, the Host header of the URL)."""
    request = AWSRequest(method="GET", url=url)
    auth = S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY, token), "s3", region, lifetime)
    with frozen_at(SIGNED_AT):
        auth.add_auth(request)
    return str(request.url)


@pytest.mark.parametrize(
    ("public_domain", "base"),
    [
        ("files.example.com", "https://files.example.com/"),
        ("https://files.example.com/", "https://files.example.com/"),
        ("http://cdn.example.com:8080/media", "http://cdn.example.com:8080/media/"),
    ],
)
def test_public_domain_urls_are_signed_for_that_host(public_domain: str, base: str) -> None:
    signer = S3Signer(
        "campus-forum",
        region="eu-central-1",
        public_domain=public_domain,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        session_token=TOKEN,
    )
    for key in HARD_KEYS:
        for overrides in OVERRIDES:
            path = base + quote(key, safe="/~")
            query = {
                name: overrides[field]
                for field, name in (
                    ("ResponseContentDisposition", "response-content-disposition"),
                    ("ResponseContentType", "response-content-type"),
                )
                if field in overrides
            }
            if query:
                path += "?" + percent_encode_sequence(query)
            expected = _botocore_signed(path, "eu-central-1", LIFETIME, TOKEN)
            assert our_url(signer, key, overrides) == expected
            assert expected.startswith(signer.url_prefix(key))
    assert signer.url_prefix("a b.png") == f"{base}a%20b.png?"
    assert signer.name == f"s3:campus-forum@{public_domain}"


# -- credentials --------------------------------------------------------------------------------


def _credential_of(url: str) -> tuple[str, str | None]:
    query = parse_qs(urlsplit(url).query)
    token = query.get("X-Amz-Security-Token", [None])[0]
    return query["X-Amz-Credential"][0].split("/")[0], token


def test_botocore_session_and_credentials_objects_sign_like_keys() -> None:
    import boto3

    store = Store("eu-central-1", None, "auto")
    expected = botocore_url(store, "campus-forum", "a b.png", token=TOKEN)
    session = boto3.Session(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=TOKEN,
        region_name="eu-central-1",
    )
    from_session = S3Signer("campus-forum", session=session)  # the region comes from it
    from_object = S3Signer(
        "campus-forum",
        region="eu-central-1",
        credentials=Credentials(ACCESS_KEY, SECRET_KEY, TOKEN),
    )
    from_provider = S3Signer(
        "campus-forum",
        region="eu-central-1",
        credentials=EnvProvider(
            environ={
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_SESSION_TOKEN": TOKEN,
            }
        ),
    )
    for signer in (from_session, from_object, from_provider):
        assert our_url(signer, "a b.png") == expected


def test_refreshing_credentials_are_read_again_when_botocore_refreshes_them() -> None:
    now = float(SIGNED_AT)
    issued: list[str] = []

    def refresh() -> dict[str, str]:
        issued.append(f"ASIANEWKEY{len(issued)}")
        expiry = dt.datetime.fromtimestamp(time.time() + 3600, dt.timezone.utc)
        return {
            "access_key": issued[-1],
            "secret_key": f"new-secret-{len(issued)}",
            "token": f"new-token-{len(issued)}",
            "expiry_time": expiry.isoformat(),
        }

    def clock() -> dt.datetime:
        return dt.datetime.fromtimestamp(time.time(), dt.timezone.utc)

    with mock.patch("time.time", return_value=now):
        credentials = RefreshableCredentials(
            "ASIAOLDKEY",
            "old-secret",
            "old-token",
            dt.datetime.fromtimestamp(now + 3600, dt.timezone.utc),
            refresh,
            "assume-role",
            time_fetcher=clock,
        )
        signer = S3Signer("campus-forum", region="eu-central-1", credentials=credentials)
        frozen = mock.patch.object(
            credentials, "get_frozen_credentials", wraps=credentials.get_frozen_credentials
        )
        with frozen as reads:
            first = signer.sign("a.png", expires_at=SIGNED_AT + 600, signed_at=SIGNED_AT)
            again = signer.sign("b.png", expires_at=SIGNED_AT + 600, signed_at=SIGNED_AT)
        # Fresh credentials are reused without asking botocore (and taking its lock) again.
        assert reads.call_count == 0
    assert _credential_of(first) == ("ASIAOLDKEY", "old-token")
    assert _credential_of(again) == ("ASIAOLDKEY", "old-token")
    # 50 minutes later botocore's advisory refresh (15 minutes before expiry) is due.
    with mock.patch("time.time", return_value=now + 3000):
        later = signer.sign("a.png", expires_at=SIGNED_AT + 600, signed_at=SIGNED_AT)
    assert issued == ["ASIANEWKEY0"]
    assert _credential_of(later) == ("ASIANEWKEY0", "new-token-1")
    rotated = S3Signer(
        "campus-forum",
        region="eu-central-1",
        access_key_id="ASIANEWKEY0",
        secret_access_key="new-secret-1",
        session_token="new-token-1",
    )
    assert later == rotated.sign("a.png", expires_at=SIGNED_AT + 600, signed_at=SIGNED_AT)


def test_a_provider_of_its_own_is_asked_on_every_signing() -> None:
    class Rotating:
        def __init__(self) -> None:
            self.current = ReadOnlyCredentials("AKIDFIRST", "first-secret", None, None)

        def get_frozen_credentials(self) -> ReadOnlyCredentials:
            return self.current

    provider = Rotating()
    signer = S3Signer("campus-forum", region="eu-central-1", credentials=provider)
    first = signer.sign("a.png", expires_at=SIGNED_AT + 60, signed_at=SIGNED_AT)
    provider.current = ReadOnlyCredentials("AKIDSECOND", "second-secret", "tok-2", None)
    second = signer.sign("a.png", expires_at=SIGNED_AT + 60, signed_at=SIGNED_AT)
    assert _credential_of(first) == ("AKIDFIRST", None)
    assert _credential_of(second) == ("AKIDSECOND", "tok-2")
    expected = S3Signer(
        "campus-forum",
        region="eu-central-1",
        access_key_id="AKIDSECOND",
        secret_access_key="second-secret",
        session_token="tok-2",
    ).sign("a.png", expires_at=SIGNED_AT + 60, signed_at=SIGNED_AT)
    assert second == expected


def test_credentials_that_fail_give_signing_error() -> None:
    class Broken:
        calls = 0

        def get_frozen_credentials(self) -> ReadOnlyCredentials:
            Broken.calls += 1
            if Broken.calls > 1:
                raise RuntimeError("the metadata service is down")
            return ReadOnlyCredentials("AKID", "secret", None, None)

    signer = S3Signer("campus-forum", region="eu-central-1", credentials=Broken())
    with pytest.raises(SigningError, match="could not read the AWS credentials"):
        signer.sign("a.png", expires_at=SIGNED_AT + 60, signed_at=SIGNED_AT)


# -- from_env -----------------------------------------------------------------------------------

ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_REGION": "auto",
    "S3_BUCKET": "campus-forum",
}


def test_from_env_names_every_missing_variable() -> None:
    with pytest.raises(ConfigurationError) as info:
        S3Signer.from_env({"S3_ENDPOINT_URL": R2})
    message = str(info.value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET", "AWS_REGION"):
        assert name in message
    with pytest.raises(ConfigurationError) as info:
        S3Signer.from_env({**ENV, "AWS_SECRET_ACCESS_KEY": ""})
    assert "AWS_SECRET_ACCESS_KEY" in str(info.value)
    assert "AWS_ACCESS_KEY_ID" not in str(info.value)


def test_from_env_reads_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        **ENV,
        "AWS_SESSION_TOKEN": TOKEN,
        "S3_ENDPOINT_URL": R2,
        "S3_ADDRESSING_STYLE": "virtual",
    }
    signer = S3Signer.from_env(env)
    store = Store("auto", R2, "virtual")
    assert our_url(signer, "a b.png") == botocore_url(store, "campus-forum", "a b.png", token=TOKEN)
    assert signer.name == f"s3:campus-forum@{R2}"
    public = S3Signer.from_env({**env, "S3_PUBLIC_DOMAIN": "files.example.com"})
    assert public.url_prefix("a.png") == "https://files.example.com/a.png?"
    # AWS_DEFAULT_REGION when AWS_REGION is not set; os.environ when no mapping is given.
    for name, value in {**ENV, "AWS_REGION": "", "AWS_DEFAULT_REGION": "eu-central-1"}.items():
        monkeypatch.setenv(name, value)
    assert S3Signer.from_env().region == "eu-central-1"
    assert SECRET_KEY not in repr(S3Signer.from_env())


# -- URL prefixes -------------------------------------------------------------------------------


@pytest.mark.parametrize("store", STORES, ids=lambda s: f"{s.region}-{s.addressing_style}")
def test_url_prefix_is_how_every_url_begins_and_nothing_else(store: Store) -> None:
    signer = signer_for(store, "campus-forum", TOKEN)
    keys = [key for key in HARD_KEYS if len(key) < 100]
    urls = {key: our_url(signer, key) for key in keys}
    assert signer.url_prefixes(keys) == [signer.url_prefix(key) for key in keys]
    for key, url in urls.items():
        prefix = signer.url_prefix(key)
        assert url.startswith(prefix) and prefix.endswith("?")
        assert signer.url_is_for(url, key)
        assert unquote(urlsplit(url).path).endswith("/" + key)
        for other in keys:
            if other != key:
                assert not signer.url_is_for(url, other), (key, other)
        parts = urlsplit(url)
        elsewhere = url.replace(parts.netloc, "evil.example", 1)
        assert not signer.url_is_for(elsewhere, key)
    other_bucket = signer_for(store, "other-bucket", TOKEN)
    assert not other_bucket.url_is_for(urls["avatar.png"], "avatar.png")


def test_url_prefix_of_a_key_that_cannot_be_signed_fits_no_url() -> None:
    signer = signer_for(STORES[0], "campus-forum")
    prefix = signer.url_prefix("bad\ud800key")
    assert prefix.startswith(signer.url_base) and prefix.endswith("?")
    assert signer.url_prefixes(["a.png", "bad\ud800key"]) == [signer.url_prefix("a.png"), prefix]


@pytest.mark.parametrize(
    "signer",
    [
        pytest.param(signer_for(store, bucket, token), id=f"{store}-{bucket}-{token is None}")
        for store in STORES
        for bucket in BUCKETS
        for token in (None, TOKEN)
    ]
    + [
        pytest.param(
            S3Signer(
                "campus-forum",
                region="auto",
                public_domain="files.example.com",
                access_key_id=ACCESS_KEY,
                secret_access_key=SECRET_KEY,
            ),
            id="public-domain",
        )
    ],
)
def test_check_signer_passes(signer: S3Signer) -> None:
    assert signer.stable and signer.takes_signed_at
    check_signer(signer)


# -- what the signer refuses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "non-empty str"),
        (None, "non-empty str"),
        (b"bytes.png", "non-empty str"),
        ("k" * 1025, "1024 bytes"),
        ("é" * 512 + "x", "1024 bytes"),
        ("bad\ud800surrogate.png", "not valid Unicode"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("a/../b.png", "'.' or '..'"),
        ("./a.png", "'.' or '..'"),
        ("a/.", "'.' or '..'"),
    ],
)
def test_bad_keys_raise_signing_error(key: Any, message: str) -> None:
    signer = signer_for(STORES[0], "campus-forum")
    with pytest.raises(SigningError, match=message):
        signer.sign(key, expires_at=SIGNED_AT + 60, signed_at=SIGNED_AT)


@pytest.mark.parametrize("value", ["", 7, "bad\udfffvalue"])
def test_bad_response_overrides_raise_signing_error(value: Any) -> None:
    signer = signer_for(STORES[0], "campus-forum")
    with pytest.raises(SigningError, match="response header value"):
        signer.sign_with(
            "a.png",
            expires_at=SIGNED_AT + 60,
            signed_at=SIGNED_AT,
            response_content_disposition=value,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bucket": ""}, r"bucket=''"),
        ({"bucket": "arn:aws:s3:eu-central-1:123456789012:accesspoint/x"}, "ARNs"),
        ({"bucket": "fast--x-s3"}, "Express"),
        ({"region": None}, r"region=None"),
        ({"region": "eu central"}, "region="),
        ({"addressing_style": "host"}, r"addressing_style='host'"),
        ({"endpoint_url": "ftp://files.example.com"}, "http:// or https://"),
        ({"endpoint_url": "https://s3.example.com/?x=1"}, "query string"),
        ({"endpoint_url": "https://user:pw@s3.example.com"}, "user name"),
        ({"endpoint_url": "https://s3.example.com:port"}, "port"),
        ({"endpoint_url": "s3.example.com"}, "http:// or https://"),
        ({"public_domain": "https://"}, "public_domain"),
        ({"access_key_id": None, "secret_access_key": None}, "got none"),
        ({"secret_access_key": None}, "secret_access_key is missing"),
        ({"credentials": Credentials("a", "b")}, "access_key_id/secret_access_key and credentials"),
    ],
)
def test_bad_settings_raise_configuration_error(kwargs: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {
        "bucket": "campus-forum",
        "region": "eu-central-1",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        **kwargs,
    }
    bucket = options.pop("bucket")
    with pytest.raises(ConfigurationError, match=message):
        S3Signer(bucket, **options)


def test_sources_without_credentials_raise_configuration_error() -> None:
    class EmptySession:
        region_name = "eu-central-1"

        def get_credentials(self) -> None:
            return None

    with pytest.raises(ConfigurationError, match="found no AWS credentials"):
        S3Signer("campus-forum", session=EmptySession())
    with pytest.raises(ConfigurationError, match="get_frozen_credentials"):
        S3Signer("campus-forum", region="eu-central-1", credentials=object())
    with pytest.raises(ConfigurationError, match="expected a boto3 or botocore Session"):
        S3Signer("campus-forum", region="eu-central-1", session=object())


def test_repr_and_errors_never_show_secrets() -> None:
    signer = signer_for(STORES[0], "campus-forum", TOKEN)
    assert SECRET_KEY not in repr(signer) and TOKEN not in repr(signer)
    with pytest.raises(SigningError) as info:
        signer.sign("a.png", expires_at=SIGNED_AT, signed_at=SIGNED_AT)
    assert SECRET_KEY not in str(info.value) and TOKEN not in str(info.value)


def test_without_botocore_the_module_imports_and_the_signer_names_the_s3_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["botocore"] = None
        from sqla_signed_urls import ConfigurationError
        from sqla_signed_urls.signers import S3Signer
        try:
            S3Signer("b", region="eu-central-1", access_key_id="a", secret_access_key="s")
        except ConfigurationError as exc:
            print(exc)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "sqla-signed-urls[s3]"' in result.stdout
    assert "'botocore'" in result.stdout
