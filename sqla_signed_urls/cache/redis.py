"""The shared layer (L2) on redis-py: standalone, Sentinel-managed or Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import ConfigurationError
from .base import SharedStore

__all__ = ["RedisStore", "client_from_url"]

_SCHEMES = ("redis", "rediss", "unix")


def client_from_url(url: str, *, socket_timeout: float, setting: str = "redis") -> Any:
    """Build a redis-py client for ``url`` without connecting.

    Timeouts are short and retries few on purpose: a URL cache must fail fast and fall back to
    signing rather than hold up a page. ``?cluster=true`` builds a ``RedisCluster``. Pass a
    ready client to ``SignedURLs(redis=...)`` to choose other settings.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if not isinstance(url, str):
        raise ConfigurationError(
            f"{setting}: expected a redis:// URL, a redis-py client or None, "
            f"got {type(url).__name__}"
        )
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"{setting}: unsupported URL scheme {parts.scheme + '://' if parts.scheme else url!r}"
            "; use redis://, rediss:// or unix://"
        )
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": 30,
        # One immediate retry on a dropped connection (a restarted server); none on a timeout,
        # so a silent server costs one socket_timeout, then the circuit breaker takes over.
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "retry_on_timeout": False,
    }
    query = dict(part.split("=", 1) for part in parts.query.split("&") if "=" in part)
    if query.get("cluster", "").lower() in ("1", "true", "yes"):
        from redis.cluster import RedisCluster

        rest = "&".join(f"{k}={v}" for k, v in query.items() if k != "cluster")
        plain = parts._replace(query=rest).geturl()
        options.pop("retry_on_timeout")
        return RedisCluster.from_url(plain, **options)
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigurationError(f"{setting}: {exc}") from None


def is_cluster(client: Any) -> bool:
    try:
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover - redis-py always has it
        return False
    return isinstance(client, RedisCluster)


class RedisStore(SharedStore):
    """URL entries as plain string keys ``<prefix><...>``, plus bookkeeping under ``<prefix>#``.

    - ``<prefix>#expiry``: sorted set of keys by end of cache lifetime, so refreshing costs in
      proportion to what expires, not to what is cached;
    - ``<prefix>#stats``: hash of fleet-wide counters;
    - ``<prefix>#invalidate``: pub/sub channel that keeps every process's L1 in step.
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.cluster = is_cluster(client)
        self.expiry_key = f"{prefix}#expiry"
        self.stats_key = f"{prefix}#stats"
        self.channel = f"{prefix}#invalidate"

    def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]:
        if len(keys) == 1:
            return [self.client.get(keys[0])]
        if self.cluster:
            return list(self.client.mget_nonatomic(keys))
        return list(self.client.mget(keys))

    def set_many(self, items: Sequence[tuple[str, bytes, int, int]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value, ttl, _ in items:
            pipe.set(key, value, ex=ttl)
        pipe.zadd(self.expiry_key, {key: until for key, _, _, until in items})
        pipe.execute()

    def delete_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=False)
        if self.cluster:
            for key in keys:
                pipe.unlink(key)
        else:
            pipe.unlink(*keys)
        pipe.zrem(self.expiry_key, *keys)
        results = pipe.execute()
        return int(sum(results[:-1]))

    def publish(self, message: str) -> None:
        self.client.publish(self.channel, message)

    def scan_keys(self, count: int = 1000) -> Iterable[list[str]]:
        bookkeeping = self.prefix + "#"
        batch: list[str] = []
        for raw in self.client.scan_iter(match=self.prefix + "*", count=count):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if key.startswith(bookkeeping):
                continue
            batch.append(key)
            if len(batch) >= count:
                yield batch
                batch = []
        if batch:
            yield batch

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, delta in deltas.items():
            pipe.hincrby(self.stats_key, name, delta)
        pipe.execute()

    def read_counters(self) -> dict[str, int]:
        raw = self.client.hgetall(self.stats_key)
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
