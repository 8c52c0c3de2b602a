"""Fixtures of the ORM tests: a recorder of the signals the core sends."""

from __future__ import annotations

from typing import Any

import pytest

from sqla_signed_urls import signals


class Recorder:
    """Collects blinker signal sends."""

    def __init__(self, *sigs: Any) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []
        for sig in sigs:
            sig.connect(self._receiver(sig.name), weak=False)
        self._sigs = sigs

    def _receiver(self, name: str) -> Any:
        def receive(sender: Any, **kwargs: Any) -> None:
            self.sent.append((name, sender, kwargs))

        self._handlers = getattr(self, "_handlers", [])
        self._handlers.append(receive)
        return receive

    def names(self) -> list[str]:
        return [name for name, _, _ in self.sent]

    def disconnect(self) -> None:
        for sig in self._sigs:
            for handler in self._handlers:
                sig.disconnect(handler)


@pytest.fixture
def recorder() -> Any:
    rec = Recorder(
        signals.cache_hit,
        signals.cache_miss,
        signals.url_signed,
        signals.url_invalidated,
        signals.sign_failed,
        signals.cache_error,
    )
    yield rec
    rec.disconnect()
