"""Settings: the public surface, ``SignedURLs.from_env()``, validation of every argument, the
``ObjectKey`` column type's options, Redis URLs and the client built from one, and secrets kept
out of reprs and error messages.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import pytest
import redis

import sqla_signed_urls
from sqla_signed_urls import (
    ConfigurationError,
    ObjectKey,
    SignatureError,
    SignedURLError,
    SignedURLs,
    SigningError,
)
from sqla_signed_urls.signers import OSSSigner, Signer
from sqla_signed_urls.testing import FakeSigner

from ..helpers.hostile import (
    LOCAL_SECRET,
    OSS_SECRET,
    PREFIX,
    REDIS_PASSWORD,
    all_text_of,
    local_signer,
    oss_signer,
)
from .conftest import OSS_ENV


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


def test_from_env_reads_the_documented_settings(monkeypatch: pytest.MonkeyPatch) -> None:
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


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"cache_ttl": 14400, "url_ttl": 14400}, "cache_ttl=14400 must be shorter"),
        ({"cache_ttl": 20000, "url_ttl": 14400}, "must be shorter than url_ttl"),
        ({"cache_ttl": 0}, "must be positive"),
        ({"url_ttl": -5}, "must be positive"),
        ({"cache_ttl": "2700"}, "cache_ttl='2700'"),
    ],
)
def test_bad_ttls_raise_at_construction(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        SignedURLs(FakeSigner(), redis="redis://127.0.0.1:1/0", **kwargs)


def test_url_ttl_beyond_signer_limit_raises() -> None:
    import oss2

    from sqla_signed_urls.signers import OSSSigner

    bucket = oss2.Bucket(
        oss2.AuthV4("id", "secret"),
        "https://oss-cn-hangzhou.aliyuncs.com",
        "campus-forum",
        region="cn-hangzhou",
    )
    with pytest.raises(ConfigurationError, match="url_ttl=700000"):
        SignedURLs(OSSSigner(bucket), redis="redis://127.0.0.1:1/0", url_ttl=700_000)
    SignedURLs(OSSSigner(bucket), redis="redis://127.0.0.1:1/0", url_ttl=7 * 24 * 3600)


# -- Redis URLs and the client built from one --------------------------------------------------


def test_db_index_parsed_from_url_without_io() -> None:
    urls = SignedURLs(FakeSigner(), redis="redis://:pw@127.0.0.1:6390/2")
    assert urls.redis.connection_pool.connection_kwargs["db"] == 2
    assert "pw" not in repr(urls)


@pytest.mark.parametrize("url", ["http://localhost:6379/0", "memcached://x", "localhost:6379"])
def test_unsupported_scheme_names_the_setting(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"SignedURLs\(redis=...\): unsupported"):
        SignedURLs(FakeSigner(), redis=url)


def test_unsupported_scheme_from_env_names_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://localhost")
    with pytest.raises(ConfigurationError, match="REDIS_URL: unsupported"):
        SignedURLs(FakeSigner())


def test_no_redis_url_uses_embedded_redis_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog_all: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    urls = SignedURLs(FakeSigner())
    warnings = [r.getMessage() for r in caplog_all.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "local to this process" in warnings[0]
    assert urls.redis.ping()


def test_client_built_from_a_url_fails_fast() -> None:
    urls = SignedURLs(FakeSigner(), redis="redis://127.0.0.1:1/0")
    try:
        kwargs = urls.redis.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25
        assert kwargs["socket_connect_timeout"] == 0.25
        assert 0 < kwargs["health_check_interval"] <= 60
        retry = kwargs["retry"]
        assert retry.get_retries() <= 1
        # A timeout is never retried: a silent server costs one socket_timeout, no more.
        assert redis.TimeoutError not in retry._supported_errors
        assert not kwargs.get("retry_on_timeout")
    finally:
        urls.close()
        urls.redis.close()


def test_socket_timeout_setting_reaches_the_client() -> None:
    urls = SignedURLs(FakeSigner(), redis="redis://127.0.0.1:1/0", socket_timeout=0.1)
    try:
        kwargs = urls.redis.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.1
        assert kwargs["socket_connect_timeout"] == 0.1
    finally:
        urls.close()
        urls.redis.close()


# -- no secret in reprs and error messages -----------------------------------------------------


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
