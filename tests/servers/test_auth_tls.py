"""AUTH and TLS against real ``redis-server`` processes: an ACL user and password from the URL,
on plain and ``rediss://`` connections, and a wrong password that falls back to signing
without the password showing up in logs, exceptions or ``repr()``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from sqla_signed_urls import SignedURLs, signals

from ..helpers.hostile import (
    LOCAL_SECRET,
    OTHER_KEY,
    PREFIX,
    VICTIM_KEY,
    HostileBase,
    HostileFile,
    all_text_of,
    local_signer,
)
from ._processes import ACL_PASSWORD, RedisServer


def _use(urls: SignedURLs, db: sessionmaker[Session]) -> list[str | None]:
    with db() as session:
        files = [session.get(HostileFile, 1), session.get(HostileFile, 2)]
        return [urls.url_for(f) for f in files if f is not None]


@pytest.fixture
def two_rows() -> Iterator[sessionmaker[Session]]:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    HostileBase.metadata.create_all(engine)
    db = sessionmaker(engine, expire_on_commit=False)
    with db() as session:
        session.add_all(
            [HostileFile(id=1, object_key=VICTIM_KEY), HostileFile(id=2, object_key=OTHER_KEY)]
        )
        session.commit()
    yield db
    engine.dispose()


def test_acl_user_and_password_from_the_url(
    redis_acl_server: RedisServer, two_rows: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    urls = SignedURLs(local_signer(), redis=redis_acl_server.url(), key_prefix=PREFIX)
    urls.install(HostileBase)
    try:
        first = _use(urls, two_rows)
        assert _use(urls, two_rows) == first
        assert urls.stats.errors == 0
        with redis.Redis(
            port=redis_acl_server.port, username="app", password=ACL_PASSWORD, socket_timeout=5
        ) as check:
            assert check.exists(f"{PREFIX}1") == 1
        for text in (repr(urls), repr(urls.store), repr(urls.signer), repr(urls.redis)):
            assert ACL_PASSWORD not in text
            assert LOCAL_SECRET not in text
    finally:
        urls.uninstall()
        urls.close()
        urls.redis.close()
    assert not [r for r in caplog.records if ACL_PASSWORD in r.getMessage()]


def test_wrong_password_falls_back_without_leaking_it(
    redis_acl_server: RedisServer, two_rows: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "hostile-wrong-pw-91be20"
    url = f"redis://app:{wrong}@127.0.0.1:{redis_acl_server.port}/0"
    errors: list[BaseException] = []

    def on_error(sender: Any, error: BaseException) -> None:
        if sender is urls:  # only this test's SignedURLs
            errors.append(error)

    signals.cache_error.connect(on_error)
    urls = SignedURLs(local_signer(), redis=url, key_prefix=PREFIX, retry_after=0.2)
    urls.install(HostileBase)
    try:
        signer = local_signer()
        assert [signer.verify(u) for u in _use(urls, two_rows)] == [VICTIM_KEY, OTHER_KEY]
        assert urls.stats.breaker_opened == 1
    finally:
        signals.cache_error.disconnect(on_error)
        urls.uninstall()
        urls.close()
        urls.redis.close()
    assert errors and all(isinstance(e, redis.AuthenticationError) for e in errors)
    for exc in errors:
        assert wrong not in all_text_of(exc)
    for record in caplog.records:
        assert wrong not in record.getMessage()
        assert ACL_PASSWORD not in record.getMessage()


def test_rediss_with_acl_user_and_password(
    redis_tls_server: RedisServer, two_rows: sessionmaker[Session]
) -> None:
    url = redis_tls_server.url(query=f"ssl_ca_certs={redis_tls_server.ca_file}")
    assert url.startswith("rediss://app:")
    urls = SignedURLs(local_signer(), redis=url, key_prefix=PREFIX)
    urls.install(HostileBase)
    try:
        first = _use(urls, two_rows)
        assert _use(urls, two_rows) == first
        assert urls.stats.errors == 0
        with redis.Redis(
            host="127.0.0.1",
            port=redis_tls_server.port,
            username="app",
            password=ACL_PASSWORD,
            ssl=True,
            ssl_ca_certs=str(redis_tls_server.ca_file),
            socket_timeout=5,
        ) as check:
            assert check.exists(f"{PREFIX}1") == 1
        assert ACL_PASSWORD not in repr(urls) + repr(urls.redis) + repr(urls.store)
    finally:
        urls.uninstall()
        urls.close()
        urls.redis.close()
