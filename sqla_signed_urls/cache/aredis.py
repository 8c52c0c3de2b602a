"""The shared layer (L2) on ``redis.asyncio``: the asyncio twin of :mod:`.redis`.

:class:`AsyncRedisStore` keeps the key layout and the commands of
:class:`~sqla_signed_urls.cache.redis.RedisStore`, so a sync and an async process share one
cache and one invalidation channel; :func:`async_client_from_url` builds its client the way
:func:`~sqla_signed_urls.cache.redis.client_from_url` builds the sync one (same timeouts,
retries and checks, no credentials in messages).

An asyncio client belongs to the event loop it first runs in: build and use it in that loop, and
close it there (``await client.aclose()``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisClusterException, RedisError, ResponseError

from ..exceptions import ConfigurationError
from .base import AsyncSharedStore, AsyncSubscription, Write
from .redis import (
    _invalid,
    client_options,
    cluster_params,
    decode_counters,
    decode_history,
    describe_client,
    is_cluster_url,
    parse_redis_url,
    used_memory,
)

__all__ = ["AsyncRedisStore", "async_client_from_url"]

log = logging.getLogger("sqla_signed_urls")


def async_client_from_url(url: str, *, socket_timeout: float, setting: str = "redis") -> Any:
    """Build a ``redis.asyncio`` client for ``url`` without connecting.

    The twin of :func:`~sqla_signed_urls.cache.redis.client_from_url`: short timeouts, one
    immediate retry on a dropped connection and none on a timeout, RESP2 unless the URL asks
    for ``?protocol=3``. ``?cluster=true`` builds a ``redis.asyncio.cluster.RedisCluster``,
    whose constructor does no I/O (it learns the slot map on first use), so it is built at
    once. Error messages never quote the URL's credentials.
    """
    import redis.asyncio
    from redis.asyncio.retry import Retry

    parts, query = parse_redis_url(url, setting)
    options = client_options(socket_timeout, Retry)
    if is_cluster_url(query):
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.connection import SSLConnection, parse_url

        if parts.scheme == "unix":
            raise ConfigurationError(
                f"{setting}: a Redis Cluster is reached over redis:// or rediss://, not unix://"
            )
        parsed, _ = cluster_params(url, parts, query, parse_url, setting)
        # What RedisCluster.from_url() does: the cluster picks its connection class itself.
        if parsed.pop("connection_class", None) is SSLConnection:
            parsed["ssl"] = True
        options.pop("retry_on_timeout")  # not a RedisCluster argument
        try:
            return RedisCluster(**{**options, **parsed})
        except (RedisClusterException, TypeError, ValueError) as exc:
            raise _invalid(setting, url, exc) from None
    try:
        return redis.asyncio.Redis.from_url(url, **options)
    except ValueError as exc:
        raise _invalid(setting, url, exc) from None


def is_async_cluster(client: Any) -> bool:
    try:
        from redis.asyncio.cluster import RedisCluster
    except ImportError:  # pragma: no cover - redis-py always has it
        return False
    return isinstance(client, RedisCluster)


class AsyncRedisStore(AsyncSharedStore):
    """:class:`~sqla_signed_urls.cache.redis.RedisStore` on a ``redis.asyncio`` client
    (standalone, Sentinel-managed or ``redis.asyncio.cluster.RedisCluster``): the same keys
    ``<prefix><...>``, expiry index ``<prefix>#expiry``, counters ``<prefix>#stats``, history
    ``<prefix>#history`` and channel ``<prefix>#invalidate``, the same commands. The store does
    not own the client: close it yourself, in its event loop::

        client = redis.asyncio.Redis.from_url("redis://localhost:6379/1")
        store = AsyncRedisStore(client, "file_url:")
        values = await store.get_many(["file_url:1", "file_url:2"])
        ...
        await client.aclose()
    """

    # RedisClusterException is no RedisError: a cluster that cannot be reached at all (its slot
    # map unknown) raises it from the first command.
    errors = (RedisError, RedisClusterException, OSError)

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.cluster = is_async_cluster(client)
        self.expiry_key = f"{prefix}#expiry"
        self.stats_key = f"{prefix}#stats"
        self.history_key = f"{prefix}#history"
        self.channel = f"{prefix}#invalidate"

    def __repr__(self) -> str:
        return f"AsyncRedisStore(prefix={self.prefix!r})"

    # -- the read path ----------------------------------------------------------------------

    async def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]:
        if len(keys) == 1:
            try:
                return [await self.client.get(keys[0].encode())]
            except Exception as exc:
                # Another kind of value under our key (MGET answers nil for those): a miss.
                if str(exc).startswith("WRONGTYPE"):
                    return [None]
                raise
        if self.cluster:
            return list(await self.client.mget_nonatomic(keys))
        return list(await self.client.mget([key.encode() for key in keys]))

    async def set_many(self, items: Sequence[Write]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value, ttl, _ in items:
            pipe.set(key, value, ex=ttl)
        pipe.zadd(self.expiry_key, {key: until for key, _, _, until in items})
        await pipe.execute()

    async def delete_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=False)
        if self.cluster:
            for key in keys:
                # A coroutine on the cluster pipeline (it only queues the command), unlike
                # every other pipeline command here (redis-py 8.1).
                await pipe.unlink(key)
        else:
            pipe.unlink(*keys)
        pipe.zrem(self.expiry_key, *keys)
        results = await pipe.execute()
        return int(sum(results[:-1]))

    # -- maintenance ------------------------------------------------------------------------

    async def clear(self) -> int:
        await self.client.unlink(self.expiry_key)
        removed = 0
        async for batch in self.scan_keys(count=1000):
            removed += await self.delete_many(batch)
        return removed

    async def scan_keys(self, count: int = 1000) -> AsyncIterator[list[str]]:
        bookkeeping = self.prefix + "#"
        batch: list[str] = []
        async for raw in self.client.scan_iter(match=self.prefix + "*", count=count):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if key.startswith(bookkeeping):
                continue
            batch.append(key)
            if len(batch) >= count:
                yield batch
                batch = []
        if batch:
            yield batch

    async def live_count(self, now: int) -> int:
        return int(await self.client.zcount(self.expiry_key, f"({now}", "+inf"))

    async def expiring(self, now: int, until: int, batch: int) -> AsyncIterator[list[str]]:
        """As :meth:`RedisStore.expiring <sqla_signed_urls.cache.redis.RedisStore.expiring>`:
        pages by score, each page O(log n + page)."""
        client, index = self.client, self.expiry_key
        await client.zremrangebyscore(index, "-inf", now)
        low = f"({now}"
        seen: set[str] = set()
        while True:
            page = await client.zrangebyscore(
                index, low, until, start=0, num=batch, withscores=True
            )
            full = len(page) >= batch
            if full:
                last = page[-1][1]
                page = page + await client.zrangebyscore(index, last, last, withscores=True)
            fresh: list[str] = []
            for member, _ in page:
                key = member.decode() if isinstance(member, bytes) else member
                if key not in seen:
                    seen.add(key)
                    fresh.append(key)
            for start in range(0, len(fresh), batch):
                yield fresh[start : start + batch]
            if not full:
                return
            low = f"({last!r}"

    async def renew(self, items: Sequence[Write], gone: Sequence[str]) -> int:
        if not (items or gone):
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key, value, ttl, _ in items:
            pipe.set(key, value, ex=ttl, xx=True)  # renew, never resurrect
        if items:
            pipe.zadd(self.expiry_key, {key: until for key, _, _, until in items}, xx=True)
        if gone:
            pipe.zrem(self.expiry_key, *gone)
        results = await pipe.execute()
        missed = [item[0] for item, ok in zip(items, results, strict=False) if not ok]
        if missed:  # expired or deleted between the read and the SET: drop their members
            await self.client.zrem(self.expiry_key, *missed)
        return len(items) - len(missed)

    async def add_counters(self, deltas: Mapping[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, delta in deltas.items():
            pipe.hincrby(self.stats_key, name, delta)
        await pipe.execute()

    async def read_counters(self) -> dict[str, int]:
        return decode_counters(await self.client.hgetall(self.stats_key))

    async def memory_used(self) -> int | None:
        try:
            info = await self.client.info("memory")
        except ResponseError:  # the in-process Redis has no INFO
            return None
        return used_memory(info)

    def describe(self) -> dict[str, object]:
        return describe_client(self.client)

    # -- fleet history ----------------------------------------------------------------------

    keeps_history = True

    async def live_counts(self, now: int, ahead: Sequence[int]) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for seconds in ahead:
            pipe.zcount(self.expiry_key, f"({now + seconds}", "+inf")
        return [int(count) for count in await pipe.execute()]

    async def try_lock(self, name: str, token: str, ttl: int) -> bool:
        return bool(await self.client.set(f"{self.prefix}#lock:{name}", token, nx=True, ex=ttl))

    async def append_history(self, at: int, point: str, keep: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.history_key, {point: at})
        pipe.zremrangebyrank(self.history_key, 0, -keep - 1)
        await pipe.execute()

    async def read_history(
        self, since: int | None = None, limit: int | None = None
    ) -> list[tuple[int, str]]:
        low = "-inf" if since is None else since
        page = {} if limit is None else {"start": 0, "num": limit}
        raw = await self.client.zrevrangebyscore(
            self.history_key, "+inf", low, withscores=True, **page
        )
        return decode_history(raw)

    # -- invalidation channel ---------------------------------------------------------------

    async def publish(self, message: str) -> None:
        await self.client.publish(self.channel, message)

    async def subscribe(self) -> AsyncSubscription:
        if self.cluster:
            # The cluster's pub/sub picks its node from the slot map, which a client that has
            # sent no command yet has not loaded.
            await self.client.initialize()
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
        except BaseException:
            await _close(pubsub)
            raise
        return _AsyncRedisSubscription(pubsub)


async def _close(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:
        log.debug("pubsub close failed")


class _AsyncRedisSubscription(AsyncSubscription):
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def next_event(self, timeout: float) -> tuple[str, str] | None:
        message = await self._pubsub.get_message(timeout=timeout)
        if message is None:
            return None
        kind = message.get("type")
        if kind == "subscribe":
            return ("subscribed", "")
        if kind == "message":
            data = message["data"]
            return ("message", data.decode() if isinstance(data, bytes) else str(data))
        return None

    async def close(self) -> None:
        await _close(self._pubsub)
