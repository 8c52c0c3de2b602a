"""Fixtures of the CacheService tests: a service on the conftest ``File`` model, and a
recorder of the operation signals.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import CacheService, SignedURLs, signals

from ..conftest import File


class Signals:
    """Records the operation signals."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []
        self._handlers: list[tuple[Any, Any]] = []
        for sig in (
            signals.cache_cleared,
            signals.cache_warmed,
            signals.urls_refreshed,
            signals.url_signed,
        ):
            handler = self._handler(sig.name)
            sig.connect(handler, weak=False)
            self._handlers.append((sig, handler))

    def _handler(self, name: str) -> Any:
        def receive(sender: Any, **kwargs: Any) -> None:
            self.sent.append((name, sender, kwargs))

        return receive

    def of(self, name: str) -> list[tuple[Any, dict[str, Any]]]:
        return [(sender, kwargs) for n, sender, kwargs in self.sent if n == name]

    def close(self) -> None:
        for sig, handler in self._handlers:
            sig.disconnect(handler)


@pytest.fixture
def sent() -> Iterator[Signals]:
    recorder = Signals()
    yield recorder
    recorder.close()


@pytest.fixture
def service(urls: SignedURLs, db: sessionmaker[Session]) -> CacheService:
    return CacheService(urls, session_factory=db, model=File)
