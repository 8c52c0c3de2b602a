"""Fixtures of the unit tests: an installed ``SignedURLs`` on the hostile-input models, and
the OSS settings the signer tests read from the environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from sqla_signed_urls import SignedURLs, signals
from sqla_signed_urls.testing import CountingRedis

from ..helpers.hostile import PREFIX, HostileBase, local_signer

ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"
OSS_ENV = {
    "OSS_ACCESS_KEY_ID": "LTAIexampleid",
    "OSS_ACCESS_KEY_SECRET": "very-secret-value",
    "OSS_ENDPOINT": ENDPOINT,
    "OSS_BUCKET": "campus-forum",
}


@pytest.fixture
def key_env() -> Iterator[tuple[SignedURLs, CountingRedis, sessionmaker[Session], list[Any]]]:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    HostileBase.metadata.create_all(engine)
    client = CountingRedis(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    urls = SignedURLs(local_signer(), redis=client, key_prefix=PREFIX, local_cache_size=0)
    urls.install(HostileBase)
    failures: list[Any] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        failures.append(kwargs["error"])

    signals.sign_failed.connect(on_failed)
    yield urls, client, sessionmaker(engine, expire_on_commit=False), failures
    signals.sign_failed.disconnect(on_failed)
    urls.uninstall()
    urls.close()
    engine.dispose()
