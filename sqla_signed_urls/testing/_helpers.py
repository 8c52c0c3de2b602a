"""Round-trip counting Redis wrapper and a fake signer (re-exported by ``testing``)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from ..signers.base import Signer

__all__ = ["CountingAsyncRedis", "CountingRedis", "FakeSigner"]

_NOT_ROUND_TRIPS = frozenset({"pipeline", "pubsub", "connection_pool", "get_connection_kwargs"})


class CountingRedis:
    """Wraps a redis-py client and counts round trips: one per command, one per pipeline.

    ``commands`` counts by command name (``"GET"``, ``"MGET"``, ``"PIPELINE"``, ...). With
    ``this_thread_only=True`` only the calls of the thread that built the wrapper count (the
    requests of a test client or an event loop, not the cache's background thread)::

        counting = CountingRedis(redis.Redis(), this_thread_only=True)
        urls = SignedURLs(signer, redis=counting)
        urls.resolve(files)
        assert counting.commands == {"MGET": 1, "PIPELINE": 1}
    """

    def __init__(self, client: Any, *, this_thread_only: bool = False) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._thread = threading.get_ident() if this_thread_only else None
        self.commands: Counter[str] = Counter()

    @property
    def round_trips(self) -> int:
        return sum(self.commands.values())

    def reset(self) -> None:
        with self._lock:
            self.commands.clear()

    def _count(self, name: str) -> None:
        if self._thread is not None and threading.get_ident() != self._thread:
            return
        with self._lock:
            self.commands[name.upper()] += 1

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return _CountingPipeline(self, self._client.pipeline(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name in _NOT_ROUND_TRIPS or name.startswith("_"):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._count(name)
            return attr(*args, **kwargs)

        return counted


class _CountingPipeline:
    def __init__(self, owner: CountingRedis, pipe: Any) -> None:
        self._owner = owner
        self._pipe = pipe

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._owner._count("pipeline")
        return self._pipe.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._pipe, name)
        if not callable(attr):
            return attr

        def queued(*args: Any, **kwargs: Any) -> Any:
            attr(*args, **kwargs)
            return self

        return queued

    def __enter__(self) -> _CountingPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pipe.reset()


class CountingAsyncRedis(CountingRedis):
    """:class:`CountingRedis` for a ``redis.asyncio`` client: a command counts when awaited.

    ::

        client = CountingAsyncRedis(fakeredis.FakeAsyncRedis())
        await urls.aresolve(files)
        assert client.commands == {"MGET": 1, "PIPELINE": 1}
    """

    _NOT_COUNTED = _NOT_ROUND_TRIPS | {"aclose", "close"}

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return _CountingAsyncPipeline(self, self._client.pipeline(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name in self._NOT_COUNTED or name.startswith("_"):
            return attr
        if name.endswith("_iter"):  # async generators (scan_iter): one command per page
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self._count(name)
            return await attr(*args, **kwargs)

        return counted


class _CountingAsyncPipeline(_CountingPipeline):
    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._owner._count("pipeline")
        return await self._pipe.execute(*args, **kwargs)

    async def __aenter__(self) -> _CountingAsyncPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pipe.reset()


class FakeSigner(Signer):
    """A signer for tests: deterministic URLs, counts its calls, can be told to fail.

    >>> signer = FakeSigner()
    >>> signer.sign("a b.png", expires_at=100)
    'https://files.test/a%20b.png?expires=100&sig=fake'
    """

    def __init__(self, name: str = "fake", *, max_url_ttl: int | None = None) -> None:
        self.name = name
        self.max_url_ttl = max_url_ttl
        self.calls: list[tuple[str, int]] = []
        self.fail_with: Exception | None = None
        self._lock = threading.Lock()

    def url_prefix(self, object_key: str) -> str:
        from urllib.parse import quote

        return f"https://files.test/{quote(object_key, safe='/')}?"

    def sign(self, object_key: str, *, expires_at: int) -> str:
        from urllib.parse import quote

        with self._lock:
            self.calls.append((object_key, expires_at))
        if self.fail_with is not None:
            raise self.fail_with
        return f"https://files.test/{quote(object_key, safe='/')}?expires={expires_at}&sig=fake"
