"""Settings from the environment, the signers, and the public surface."""

from __future__ import annotations

import time
import types
from typing import Any

import oss2
import pytest
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import sqla_signed_urls
from sqla_signed_urls import (
    ConfigurationError,
    ObjectKey,
    SignatureError,
    SignedURLError,
    SignedURLs,
    SigningError,
)
from sqla_signed_urls.signers import LocalSigner, OSSSigner, Signer
from sqla_signed_urls.testing import FakeSigner

ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"
OSS_ENV = {
    "OSS_ACCESS_KEY_ID": "LTAIexampleid",
    "OSS_ACCESS_KEY_SECRET": "very-secret-value",
    "OSS_ENDPOINT": ENDPOINT,
    "OSS_BUCKET": "campus-forum",
}


def test_public_surface_is_complete() -> None:
    exported = set(sqla_signed_urls.__all__)
    assert {
        "SignedURLs",
        "ObjectKey",
        "CacheService",
        "signals",
        "ConfigurationError",
        "SigningError",
        "SignatureError",
        "SignedURLError",
    } <= exported
    public = {n for n in vars(sqla_signed_urls) if not n.startswith("_")}
    modules = {n for n, v in vars(sqla_signed_urls).items() if isinstance(v, types.ModuleType)}
    assert public - modules - {"annotations", "TYPE_CHECKING", "Any"} <= exported
    assert issubclass(ConfigurationError, SignedURLError)
    assert issubclass(SigningError, SignedURLError)
    assert issubclass(SignatureError, SignedURLError)


def test_from_env_reads_the_seeds_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OSS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/1")
    monkeypatch.setenv("FILE_URL_CACHE_TIMEOUT", "600")
    monkeypatch.setenv("FILE_URL_CACHE_KEY_PREFIX", "dev_file_url:")
    monkeypatch.setenv("FILE_URL_EXPIRES", "7200")
    urls = SignedURLs.from_env()
    assert urls.settings.cache_ttl == 600
    assert urls.settings.url_ttl == 7200
    assert urls.settings.key_prefix == "dev_file_url:"
    assert urls.redis.connection_pool.connection_kwargs["db"] == 1
    assert isinstance(urls.signer, OSSSigner)
    assert urls.signer.version == "v1"
    assert "very-secret-value" not in repr(urls)
    overridden = SignedURLs.from_env(FakeSigner(), cache_ttl=60)
    assert overridden.settings.cache_ttl == 60


def test_from_env_rejects_bad_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILE_URL_CACHE_TIMEOUT", "45min")
    with pytest.raises(ConfigurationError, match="FILE_URL_CACHE_TIMEOUT='45min'"):
        SignedURLs.from_env(FakeSigner())


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


def test_signer_must_be_a_signer() -> None:
    with pytest.raises(ConfigurationError, match="expected a Signer"):
        SignedURLs(object(), redis="redis://127.0.0.1:1/0")  # type: ignore[arg-type]
    assert issubclass(FakeSigner, Signer)


def test_object_key_type_options_and_repr() -> None:
    assert repr(ObjectKey(512)) == "ObjectKey(length=512)"
    assert (
        repr(ObjectKey(64, url_attr="thumb_url", namespace="thumbs"))
        == "ObjectKey(length=64, url_attr='thumb_url', namespace='thumbs')"
    )
    assert ObjectKey(url_attr="thumb_url").key_namespace == "thumb_url"
    assert ObjectKey().key_namespace is None
    with pytest.raises(ConfigurationError, match="url_attr"):
        ObjectKey(url_attr="not valid")
    with pytest.raises(ConfigurationError, match="namespace"):
        ObjectKey(namespace="a:b")
    with pytest.raises(ConfigurationError, match="length"):
        ObjectKey(0)


def test_object_key_column_emits_no_warnings_and_caches_statements() -> None:
    class TBase(DeclarativeBase):
        pass

    class Thing(TBase):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        key: Mapped[str | None] = mapped_column(ObjectKey(128))
        name: Mapped[str] = mapped_column(String(8))

    from sqlalchemy import create_engine, select

    engine = create_engine("sqlite://")
    TBase.metadata.create_all(engine)
    with engine.connect() as conn:
        for _ in range(2):
            result = conn.execute(select(Thing.key).where(Thing.key == "x"))
            assert result.all() == []
        assert "cached since" in result.context._get_cache_stats()  # type: ignore[attr-defined]
    engine.dispose()


def test_attr_not_installed_gives_clear_error(urls: SignedURLs) -> None:
    class Plain:
        pass

    with pytest.raises(ConfigurationError, match="not a signed-URL attribute"):
        urls.url_for(Plain())


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"local_cache_size": -1}, "local_cache_size=-1"),
        ({"key_prefix": ""}, "key_prefix=''"),
        ({"key_prefix": "file url:"}, "glob characters"),
        ({"url_window": 999}, "url_window=999"),
        ({"ttl_jitter": 0.5}, "ttl_jitter=0.5"),
        ({"socket_timeout": 0}, "socket_timeout=0"),
    ],
)
def test_other_settings_are_validated(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment.replace("(", r"\(")):
        SignedURLs(FakeSigner(), redis="redis://127.0.0.1:1/0", **kwargs)
