"""Choosing the signer from the environment: S3 when ``S3_BUCKET`` is set, OSS when
``OSS_BUCKET`` is, a clear error for both or neither; the same for ``SignedURLs.from_env()``,
the Flask extension and the command line."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

from sqla_signed_urls import ConfigurationError, SignedURLs
from sqla_signed_urls.cli import main
from sqla_signed_urls.flask import FlaskSignedURLs
from sqla_signed_urls.signers import OSSSigner, S3Signer
from sqla_signed_urls.signers.env import signer_from_env

S3_ENV = {
    "S3_BUCKET": "forum-files",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "secret-example",
    "AWS_REGION": "eu-central-1",
}
OSS_ENV = {
    "OSS_BUCKET": "forum-files",
    "OSS_ACCESS_KEY_ID": "oss-id",
    "OSS_ACCESS_KEY_SECRET": "oss-secret",
    "OSS_ENDPOINT": "https://oss-cn-hangzhou.aliyuncs.com",
}
EVERY_NAME = [*S3_ENV, *OSS_ENV, "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "S3_ENDPOINT_URL"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in EVERY_NAME:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_bucket_variable_chooses_the_store() -> None:
    s3 = signer_from_env(S3_ENV)
    assert isinstance(s3, S3Signer) and s3.bucket == "forum-files"
    assert isinstance(signer_from_env(OSS_ENV), OSSSigner)
    with pytest.raises(ConfigurationError, match="both S3_BUCKET and OSS_BUCKET"):
        signer_from_env({**S3_ENV, **OSS_ENV})
    with pytest.raises(ConfigurationError, match="no signer: set S3_BUCKET"):
        signer_from_env({})
    with pytest.raises(ConfigurationError, match="AWS_SECRET_ACCESS_KEY"):
        signer_from_env({k: v for k, v in S3_ENV.items() if k != "AWS_SECRET_ACCESS_KEY"})


def test_signed_urls_from_env(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in S3_ENV.items():
        clean_env.setenv(name, value)
    clean_env.delenv("REDIS_URL", raising=False)
    urls = SignedURLs.from_env()
    try:
        assert isinstance(urls.signer, S3Signer)
    finally:
        urls.close()


def test_the_flask_extension_reads_the_store_from_app_config(clean_env: Any) -> None:
    app = Flask(__name__)
    app.config.update(S3_ENV)
    ext = FlaskSignedURLs(app)
    try:
        assert isinstance(ext.urls.signer, S3Signer)
    finally:
        ext.urls.close()
    other = Flask(__name__)
    other.config.update(OSS_ENV)
    ext = FlaskSignedURLs(other)
    try:
        assert isinstance(ext.urls.signer, OSSSigner)
    finally:
        ext.urls.close()


def test_the_command_line_refuses_two_stores(clean_env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(
        main, ["stats"], env={**S3_ENV, **OSS_ENV, "REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    assert result.exit_code != 0
    assert "both S3_BUCKET and OSS_BUCKET" in result.output
