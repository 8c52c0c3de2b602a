"""The signers: ``OSSSigner`` (V1, V4, STS, from the environment) and ``LocalSigner`` (signing,
verifying, refusing keys and secrets it cannot use), and awkward object keys that round-trip
through both and through the model.
"""

from __future__ import annotations

import time
from typing import Any

import oss2
import pytest

from sqla_signed_urls import ConfigurationError, SignatureError, SignedURLs, SigningError
from sqla_signed_urls.signers import LocalSigner, OSSSigner

from ..conftest import File, add_files
from .conftest import ENDPOINT, OSS_ENV


def test_oss_from_env_names_missing_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OSS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OSS_BUCKET", "campus-forum")
    with pytest.raises(ConfigurationError) as info:
        OSSSigner.from_env()
    message = str(info.value)
    for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_ENDPOINT"):
        assert name in message
    assert "OSS_BUCKET" not in message


def test_oss_from_env_v4_and_sts() -> None:
    env = {**OSS_ENV, "OSS_REGION": "cn-hangzhou", "OSS_SESSION_TOKEN": "sts-token-value"}
    signer = OSSSigner.from_env(env)
    assert signer.version == "v4"
    assert signer.max_url_ttl == 7 * 24 * 3600
    url = signer.sign("a.png", expires_at=int(time.time()) + 3600)
    assert "x-oss-signature=" in url and "x-oss-security-token=" in url
    assert "sts-token-value" not in repr(signer)


def test_oss_v1_urls_carry_the_exact_expiry_and_are_stable() -> None:
    bucket = oss2.Bucket(oss2.Auth("id", "secret"), ENDPOINT, "campus-forum")
    signer = OSSSigner(bucket)
    expires_at = int(time.time()) + 14400
    first = signer.sign("posts/1.jpg", expires_at=expires_at)
    assert f"Expires={expires_at}" in first
    assert signer.sign("posts/1.jpg", expires_at=expires_at) == first


def test_oss_rejects_overlong_keys_with_signing_error() -> None:
    bucket = oss2.Bucket(oss2.Auth("id", "secret"), ENDPOINT, "campus-forum")
    with pytest.raises(SigningError, match="1023 bytes"):
        OSSSigner(bucket).sign("k" * 1024, expires_at=int(time.time()) + 60)


def test_local_signer_verify_rejects_tampering_and_expiry() -> None:
    signer = LocalSigner("0123456789abcdef0123", "https://forum.test/files")
    now = int(time.time())
    url = signer.sign("avatars/7.png", expires_at=now + 60)
    assert signer.verify(url) == "avatars/7.png"
    assert signer.verify(url.split("forum.test", 1)[1]) == "avatars/7.png"  # path + query
    with pytest.raises(SignatureError, match="does not match"):
        signer.verify(url.replace("avatars/7", "avatars/8"))
    with pytest.raises(SignatureError, match="does not match"):
        signer.verify(url.replace(f"expires={now + 60}", f"expires={now + 6000}"))
    with pytest.raises(SignatureError, match="expired"):
        signer.verify(url, now=now + 61)
    with pytest.raises(SignatureError):
        signer.verify("https://forum.test/files/a.png")
    with pytest.raises(SignatureError, match="not under"):
        signer.verify("https://forum.test/other/a.png?expires=1&signature=x")


@pytest.mark.parametrize("key", ["", "../etc/passwd", "a//b", "/lead", "tab\there", "a/./b"])
def test_local_signer_rejects_keys_a_browser_would_rewrite(key: str) -> None:
    signer = LocalSigner("0123456789abcdef0123", "/files")
    with pytest.raises(SigningError):
        signer.sign(key, expires_at=int(time.time()) + 60)


def test_local_signer_needs_a_real_secret() -> None:
    with pytest.raises(ConfigurationError, match="at least 16 bytes"):
        LocalSigner("short", "/files")
    assert "0123456789abcdef0123" not in repr(LocalSigner("0123456789abcdef0123", "/files"))


# -- awkward object keys round-trip ------------------------------------------------------------


AWKWARD_KEYS = [
    "with space.png",
    "a+b.png",
    "100%.png",
    "hash#tag.png",
    "what?.png",
    "中文/文件 名.jpg",
    "deep/nested/path/to/file.tar.gz",
    "emoji-😀.png",
]


@pytest.mark.parametrize("object_key", AWKWARD_KEYS)
def test_awkward_keys_round_trip_local_signer(object_key: str) -> None:
    from sqla_signed_urls.signers import LocalSigner

    signer = LocalSigner("s" * 32, "https://forum.test/files")
    url = signer.sign(object_key, expires_at=int(time.time()) + 60)
    assert signer.verify(url) == object_key


@pytest.mark.parametrize("object_key", AWKWARD_KEYS)
def test_awkward_keys_round_trip_oss_signer(object_key: str) -> None:
    from urllib.parse import unquote, urlsplit

    import oss2

    from sqla_signed_urls.signers import OSSSigner

    bucket = oss2.Bucket(
        oss2.Auth("id", "secret"), "https://oss-cn-hangzhou.aliyuncs.com", "campus-forum"
    )
    url = OSSSigner(bucket).sign(object_key, expires_at=int(time.time()) + 3600)
    parts = urlsplit(url)
    assert parts.netloc == "campus-forum.oss-cn-hangzhou.aliyuncs.com"
    assert unquote(parts.path[1:]) == object_key


def test_awkward_keys_through_the_model(urls: SignedURLs, db: Any) -> None:
    from urllib.parse import unquote, urlsplit

    ids = add_files(db, *AWKWARD_KEYS)
    with db() as session:
        files = [session.get(File, i) for i in ids]
        for file, expected in zip(files, AWKWARD_KEYS, strict=True):
            assert file is not None and file.url is not None
            assert unquote(urlsplit(file.url).path[1:]) == expected
        assert urls.resolve(files) == [f.url for f in files if f is not None]
