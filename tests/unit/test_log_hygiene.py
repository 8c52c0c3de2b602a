"""No log record of the suite holds a signature, password or token.

The suite-wide scan lives in ``tests/log_hygiene_plugin.py`` (a pytest plugin: one handler on
the root logger for the whole session; offenders fail the run at the end). This module checks
that the plugin is on, that it catches what it must and lets ordinary lines through, that it
really fails a session, and drives the library through its noisy paths at DEBUG level with
every kind of signer and a password-protected Redis URL, scanning what comes out.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import oss2
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from sqla_signed_urls import ConfigurationError, SignedURLs
from sqla_signed_urls.signers import LocalSigner, OSSSigner
from sqla_signed_urls.testing import FakeSigner
from sqla_signed_urls.types import ObjectKey

from ..log_hygiene_plugin import register_secret, scan

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SECRET = "log-hygiene-local-secret-5d1e9b27"
OSS_SECRET = "log-hygiene-oss-secret-8c2f"
STS_TOKEN = "log-hygiene-sts-token-CAIS1234567890"
REDIS_PASSWORD = "log-hygiene-redis-pw-3a7e"


def _plugin_active(config: pytest.Config) -> bool:
    return any(
        getattr(plugin, "__name__", "").endswith("log_hygiene_plugin")
        for plugin in config.pluginmanager.get_plugins()
    )


@pytest.mark.xfail(
    "not any(getattr(p, '__name__', '').endswith('log_hygiene_plugin') "
    "for p in config.pluginmanager.get_plugins())",
    strict=True,
    reason='enable the suite-wide scan: pytest_plugins = ["tests.log_hygiene_plugin"] '
    "in tests/conftest.py",
)
def test_the_suite_wide_scan_is_enabled(request: pytest.FixtureRequest) -> None:
    assert _plugin_active(request.config)


# -- the scanner -------------------------------------------------------------------------------

BAD_LINES = [
    "served https://forum.test/files/a.png?expires=1795681158&signature=P9I_M4fMo9nEOYFHrRZlx_8OJ",
    "https://b.oss-cn-hangzhou.aliyuncs.com/a.png?OSSAccessKeyId=id&Expires=1&Signature=ADXB52k7z%3D",
    "https://b.oss-cn-hangzhou.aliyuncs.com/a?x-oss-credential=x&x-oss-signature=3f1e2d4c5b6a7f8e",
    "https://b.oss-cn-hangzhou.aliyuncs.com/a?Expires=1&security-token=CAIS0987654321&Signature=x",
    "https://s3.example/a?X-Amz-Credential=x&X-Amz-Signature=0123456789abcdef",
    "https://files.test/a.png?expires=100&sig=fake",
    "connecting to redis://app:s3cr3t-pass@127.0.0.1:6379/0",
    "rediss://:only-a-password@cache.internal:6380/1",
    "headers={'Authorization': 'OSS id:ADXB52k7zckb7ipDKlh97hS3gxE='}",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
]
CLEAN_LINES = [
    "Using cached URL for file 123",
    "Generating new signed URL for file 7 (cache miss)",
    "Cached URL for file 7 for 2592 seconds",
    "Failed to generate signed URL for file 9: object key contains a control character",
    "Redis unavailable (ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection "
    "refused.); signing URLs directly, retrying every 5s",
    "Redis reachable again; caching signed URLs",
    "redis://127.0.0.1:6379/15",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "Connection(username=<REDACTED>,password=<REDACTED>,host=h,port=1)",
    "redis://app:<REDACTED>@127.0.0.1:6379/0",
    "the signature of this function changed",
    "Cleared 12 cached URL(s)",
]


@pytest.mark.parametrize("line", BAD_LINES)
def test_scanner_flags_credentials(line: str) -> None:
    assert scan(line)


@pytest.mark.parametrize("line", CLEAN_LINES)
def test_scanner_passes_ordinary_lines(line: str) -> None:
    assert scan(line) == []


def test_scanner_flags_registered_and_constructed_secrets(request: pytest.FixtureRequest) -> None:
    register_secret("log-hygiene-registered-9f8e7d")
    assert scan("oops log-hygiene-registered-9f8e7d leaked") == ["known secret"]
    assert scan("short") == []
    if _plugin_active(request.config):
        # The plugin learns signer secrets as they are constructed.
        LocalSigner("log-hygiene-constructed-1a2b3c4d", "/files")
        assert "known secret" in scan("x log-hygiene-constructed-1a2b3c4d y")


def test_the_plugin_fails_a_session_that_logs_a_signed_url(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_leaky.py").write_text(
        textwrap.dedent(
            """
            import logging

            def test_leaks():
                logging.getLogger("app").warning(
                    "serving https://files.test/a.png?expires=100&sig=fake")
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.log_hygiene_plugin",
            "-p",
            "no:cacheprovider",
            "-c",
            str(tmp_path / "pytest.ini"),
            str(tmp_path / "test_leaky.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "log hygiene: credentials in log records" in done.stdout
    assert "test_leaks" in done.stdout
    assert "sig=fake" not in done.stdout  # the report does not repeat the credential


# -- the library at DEBUG ----------------------------------------------------------------------


class HygieneBase(DeclarativeBase):
    pass


class HygieneFile(HygieneBase):
    __tablename__ = "hygiene_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


def _signers() -> list[Any]:
    endpoint = "https://oss-cn-hangzhou.aliyuncs.com"
    return [
        FakeSigner(),
        LocalSigner(LOCAL_SECRET, "https://forum.test/files"),
        OSSSigner(oss2.Bucket(oss2.Auth("hygiene-key-id", OSS_SECRET), endpoint, "hygiene")),
        OSSSigner(
            oss2.Bucket(
                oss2.AuthV4("hygiene-key-id", OSS_SECRET),
                endpoint,
                "hygiene",
                region="cn-hangzhou",
            )
        ),
        OSSSigner(
            oss2.Bucket(oss2.StsAuth("hygiene-key-id", OSS_SECRET, STS_TOKEN), endpoint, "hygiene")
        ),
    ]


@pytest.fixture
def hygiene_db() -> Iterator[sessionmaker[Session]]:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    HygieneBase.metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        session.add_all(
            HygieneFile(id=i, object_key=k)
            for i, k in enumerate(["a.png", "dir/b c.png", "bad\x01key", "ü/ß.png"], 1)
        )
        session.commit()
    yield factory
    engine.dispose()


def _workload(urls: SignedURLs, db: sessionmaker[Session]) -> None:
    with db() as session:
        files = session.query(HygieneFile).order_by(HygieneFile.id).all()
        for _ in range(2):
            [f.url for f in files]
            urls.resolve(files)
        files[0].object_key = "a2.png"
        session.commit()
        files[0].url  # noqa: B018
        session.delete(files[1])
        session.commit()


@pytest.mark.parametrize("which", range(5), ids=["fake", "local", "oss-v1", "oss-v4", "oss-sts"])
def test_library_logs_no_credentials_at_debug(
    which: int, hygiene_db: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    for secret in (LOCAL_SECRET, OSS_SECRET, STS_TOKEN, REDIS_PASSWORD):
        register_secret(secret)
    caplog.set_level(logging.DEBUG, logger="sqla_signed_urls")
    signer = _signers()[which]
    healthy = SignedURLs(signer, redis=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    # A password-protected Redis that is down: the outage path logs the error.
    down = SignedURLs(
        signer, redis=f"redis://app:{REDIS_PASSWORD}@127.0.0.1:1/0", key_prefix="down:"
    )
    try:
        for urls in (healthy, down):
            urls.install(HygieneBase)
            try:
                _workload(urls, hygiene_db)
            finally:
                urls.uninstall()
        failing = FakeSigner()
        failing.fail_with = RuntimeError(
            "upstream said no to https://files.test/a.png?expires=1&sig=fake"
        )
        broken = SignedURLs(failing, redis=fakeredis.FakeRedis(), key_prefix="broken:")
        broken.install(HygieneBase)
        try:
            _workload(broken, hygiene_db)
        finally:
            broken.uninstall()
            broken.close()
        with pytest.raises(ConfigurationError) as info:
            SignedURLs(signer, redis=f"http://app:{REDIS_PASSWORD}@127.0.0.1/0")
        logging.getLogger("sqla_signed_urls").debug("configuration error: %s", info.value)
    finally:
        healthy.close()
        down.close()
        down.redis.close()
    records = [r for r in caplog.records if r.name.startswith("sqla_signed_urls")]
    assert records, "the workload logged nothing: the test would prove nothing"
    assert any("Redis unavailable" in r.getMessage() for r in records)
    assert any(r.levelno == logging.ERROR for r in records)  # the failed signing
    leaks = [(r.levelname, r.getMessage()) for r in records if scan(_text(r))]
    assert leaks == []


def _text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += logging.Formatter().formatException(record.exc_info)
    return text


def test_signing_with_sts_credentials_leaks_nothing_through_oss2_debug_logs(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """oss2 logs what it signs at DEBUG, an STS token included; ``OSSSigner`` signs with its
    own code, so even with the ``oss2`` logger at DEBUG no record of a signing holds it."""
    register_secret(STS_TOKEN)
    oss_logger = logging.getLogger("oss2")
    old_propagate = oss_logger.propagate
    oss_logger.propagate = False  # keep these records away from the suite-wide scan
    oss_logger.addHandler(caplog.handler)
    old_level = oss_logger.level
    oss_logger.setLevel(logging.DEBUG)
    try:
        signer = _signers()[4]
        url = signer.sign("a.png", expires_at=int(time.time()) + 3600)
    finally:
        oss_logger.setLevel(old_level)
        oss_logger.removeHandler(caplog.handler)
        oss_logger.propagate = old_propagate
    assert "security-token=" in url  # the signer did put the token into the URL
    texts = [r.getMessage() for r in caplog.records if r.name.startswith("oss2")]
    assert not any(scan(t) for t in texts)
