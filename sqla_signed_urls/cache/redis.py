"""The shared layer (L2) on redis-py: standalone, Sentinel-managed or Redis Cluster."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

from redis.exceptions import RedisError, ResponseError

from .._extras import require
from ..exceptions import ConfigurationError
from .base import SharedStore, Subscription, Write

__all__ = ["LazyRedisCluster", "RedisStore", "client_from_url", "make_client", "redact_url"]

log = logging.getLogger("sqla_signed_urls")

_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """``url`` with its user name and password (everything before the last ``@``) hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def _invalid(setting: str, url: str, exc: Exception) -> ConfigurationError:
    """A configuration error about ``url`` that never quotes its credentials.

    urllib's own messages may quote part of a password (``'a/b'`` splits the netloc), so they
    are shown only when the URL has no credentials at all.
    """
    shown = redact_url(url)
    detail = str(exc) if shown == url else "check the credentials are percent-encoded"
    return ConfigurationError(f"{setting}: {shown!r} is not a valid Redis URL ({detail})")


def client_from_url(url: str, *, socket_timeout: float, setting: str = "redis") -> Any:
    """Build a redis-py client for ``url`` without connecting.

    Timeouts are short and retries few on purpose: a URL cache must fail fast and fall back to
    signing rather than hold up a page. ``?cluster=true`` builds a ``RedisCluster`` (on first
    use: its constructor connects). Pass a ready client to ``SignedURLs(redis=...)`` to choose
    other settings. Error messages never quote the URL's credentials.
    """
    import redis
    from redis.retry import Retry

    parts, query = parse_redis_url(url, setting)
    options = client_options(socket_timeout, Retry)
    if is_cluster_url(query):
        from redis.connection import parse_url

        parsed, plain = cluster_params(url, parts, query, parse_url, setting)
        options.pop("retry_on_timeout")
        return LazyRedisCluster({**options, **parsed}, redact_url(plain))
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise _invalid(setting, url, exc) from None


def parse_redis_url(url: Any, setting: str) -> tuple[SplitResult, dict[str, str]]:
    """Check ``url`` is a Redis URL (scheme, syntax) and split it; shared by the sync and
    async client builders. Errors name ``setting`` and never quote credentials."""
    if not isinstance(url, str):
        raise ConfigurationError(
            f"{setting}: expected a redis:// URL, a redis-py client or None, "
            f"got {type(url).__name__}"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _invalid(setting, url, exc) from None
    if parts.scheme not in _SCHEMES:
        shown = parts.scheme + "://" if parts.scheme else redact_url(url)
        raise ConfigurationError(
            f"{setting}: unsupported URL scheme {shown!r}; use redis://, rediss:// or unix://"
        )
    query = dict(part.split("=", 1) for part in parts.query.split("&") if "=" in part)
    return parts, query


def client_options(socket_timeout: float, retry_class: Any) -> dict[str, Any]:
    """What every client built from a URL gets, sync or async."""
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": 30,
        # One immediate retry on a dropped connection (a restarted server); none on a timeout,
        # so a silent server costs one socket_timeout, then the circuit breaker takes over.
        "retry": retry_class(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "retry_on_timeout": False,
        # RESP2 unless the URL asks for ?protocol=3: redis-py's pure-Python RESP2 reader
        # parses a 100-value MGET reply measurably faster, and nothing here needs RESP3.
        "protocol": 2,
    }


def is_cluster_url(query: dict[str, str]) -> bool:
    return query.get("cluster", "").lower() in ("1", "true", "yes")


def cluster_params(
    url: str, parts: SplitResult, query: dict[str, str], parse_url: Any, setting: str
) -> tuple[dict[str, Any], str]:
    """The connection parameters of a ``?cluster=true`` URL and the URL without that flag; a
    db index other than 0 is refused, since a cluster has only db 0."""
    rest = "&".join(f"{k}={v}" for k, v in query.items() if k != "cluster")
    plain = parts._replace(query=rest).geturl()
    try:
        parsed: dict[str, Any] = parse_url(plain)
    except ValueError as exc:
        raise _invalid(setting, url, exc) from None
    if parsed.pop("db", 0) != 0:
        raise ConfigurationError(
            f"{setting}: a Redis Cluster has no db index other than 0; give each "
            "environment its own key_prefix instead"
        )
    return parsed, plain


def make_client(redis: Any, *, socket_timeout: float) -> Any:
    """The redis-py client for ``SignedURLs(redis=...)``: a URL, a ready client, or ``None``
    for ``REDIS_URL`` (and, without it, an in-process Redis that caches for this process only).
    """
    if redis is None:
        redis = os.environ.get("REDIS_URL") or None
        setting = "REDIS_URL"
    else:
        setting = "SignedURLs(redis=...)"
    if redis is None:
        fakeredis = require("fakeredis", "embedded", "The in-process Redis (no REDIS_URL set)")
        log.warning(
            "No REDIS_URL set: using an in-process Redis, so the URL cache is local to "
            "this process; set REDIS_URL to share it"
        )
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    if isinstance(redis, str):
        return client_from_url(redis, socket_timeout=socket_timeout, setting=setting)
    if not all(hasattr(redis, name) for name in ("get", "mget", "pipeline", "publish")):
        raise ConfigurationError(
            f"{setting}: expected a redis:// URL, a redis-py client or None, "
            f"got {type(redis).__name__}"
        )
    return redis


class LazyRedisCluster:
    """A ``RedisCluster`` built on first use, for ``redis://...?cluster=true`` URLs.

    ``RedisCluster()`` connects in its constructor to learn the slot map, so building it when
    ``SignedURLs`` is constructed would fail while the cluster is down. Until a build succeeds,
    every use tries again and raises the connection error, which the circuit breaker handles.
    """

    def __init__(self, options: dict[str, Any], shown_url: str) -> None:
        self._options = options
        self._shown_url = shown_url
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The ``RedisCluster`` (built, and so connected, on the first call)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from redis.cluster import RedisCluster

                    # Not RedisCluster.from_url(): with it, close() leaves one socket per
                    # master open until garbage collection (redis-py 8.1).
                    self._client = RedisCluster(**self._options)
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __repr__(self) -> str:
        return f"LazyRedisCluster({self._shown_url!r})"


def is_cluster(client: Any) -> bool:
    try:
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover - redis-py always has it
        return False
    return isinstance(client, (RedisCluster, LazyRedisCluster))


class RedisStore(SharedStore):
    """URL entries as plain string keys ``<prefix><...>``, plus bookkeeping under ``<prefix>#``.

    - ``<prefix>#expiry``: sorted set of keys by end of cache lifetime, so refreshing costs in
      proportion to what expires, not to what is cached;
    - ``<prefix>#stats``: hash of fleet-wide counters;
    - ``<prefix>#history``: sorted set of fleet snapshots by time (capped), and
      ``<prefix>#lock:<name>``: short-lived locks electing the process that records them;
    - ``<prefix>#invalidate``: pub/sub channel that keeps every process's L1 in step.

    No ``KEYS``, no ``FLUSHDB``; every command names one key (or none), so every command
    works on Redis Cluster whatever slots the keys hash to::

        store = RedisStore(redis.Redis.from_url("redis://localhost:6379/1"), "file_url:")
        SignedURLs(signer, store=store)
    """

    errors = (RedisError, OSError)

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.cluster = is_cluster(client)
        self.expiry_key = f"{prefix}#expiry"
        self.stats_key = f"{prefix}#stats"
        self.history_key = f"{prefix}#history"
        self.channel = f"{prefix}#invalidate"

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"

    # -- the read path ----------------------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]:
        if len(keys) == 1:
            try:
                return [self.client.get(keys[0].encode())]
            except Exception as exc:
                # Another kind of value under our key (MGET answers nil for those): a miss,
                # which the write then replaces; not a reason to call Redis down.
                if str(exc).startswith("WRONGTYPE"):
                    return [None]
                raise
        if self.cluster:
            return list(self.client.mget_nonatomic(keys))
        # Keys go encoded: redis-py's per-argument encoder costs more than str.encode here.
        return list(self.client.mget([key.encode() for key in keys]))

    def set_many(self, items: Sequence[Write]) -> None:
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

    # -- maintenance ------------------------------------------------------------------------

    def clear(self) -> int:
        self.client.unlink(self.expiry_key)
        return sum(self.delete_many(batch) for batch in self.scan_keys(count=1000))

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

    def live_count(self, now: int) -> int:
        return int(self.client.zcount(self.expiry_key, f"({now}", "+inf"))

    def expiring(self, now: int, until: int, batch: int) -> Iterator[list[str]]:
        """Pages by score rather than by offset so each page costs O(log n + page): after a
        full page, every member sharing its last score is fetched too, then paging goes on
        above it."""
        client, index = self.client, self.expiry_key
        # Members whose lifetime has ended: their keys are gone too (same TTL).
        client.zremrangebyscore(index, "-inf", now)
        low = f"({now}"
        seen: set[str] = set()
        while True:
            page = client.zrangebyscore(index, low, until, start=0, num=batch, withscores=True)
            full = len(page) >= batch
            if full:
                last = page[-1][1]
                page = page + client.zrangebyscore(index, last, last, withscores=True)
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

    def renew(self, items: Sequence[Write], gone: Sequence[str]) -> int:
        if not (items or gone):
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key, value, ttl, _ in items:
            pipe.set(key, value, ex=ttl, xx=True)  # renew, never resurrect
        if items:
            pipe.zadd(self.expiry_key, {key: until for key, _, _, until in items}, xx=True)
        if gone:
            pipe.zrem(self.expiry_key, *gone)
        results = pipe.execute()
        missed = [item[0] for item, ok in zip(items, results, strict=False) if not ok]
        if missed:  # expired or deleted between the read and the SET: drop their members
            self.client.zrem(self.expiry_key, *missed)
        return len(items) - len(missed)

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, delta in deltas.items():
            pipe.hincrby(self.stats_key, name, delta)
        pipe.execute()

    def read_counters(self) -> dict[str, int]:
        return decode_counters(self.client.hgetall(self.stats_key))

    def memory_used(self) -> int | None:
        try:
            info = self.client.info("memory")
        except ResponseError:  # the in-process Redis has no INFO
            return None
        return used_memory(info)

    def describe(self) -> dict[str, object]:
        return describe_client(self.client)

    # -- fleet history ----------------------------------------------------------------------

    keeps_history = True

    def live_counts(self, now: int, ahead: Sequence[int]) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for seconds in ahead:
            pipe.zcount(self.expiry_key, f"({now + seconds}", "+inf")
        return [int(count) for count in pipe.execute()]

    def try_lock(self, name: str, token: str, ttl: int) -> bool:
        return bool(self.client.set(f"{self.prefix}#lock:{name}", token, nx=True, ex=ttl))

    def append_history(self, at: int, point: str, keep: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.history_key, {point: at})
        pipe.zremrangebyrank(self.history_key, 0, -keep - 1)
        pipe.execute()

    def read_history(
        self, since: int | None = None, limit: int | None = None
    ) -> list[tuple[int, str]]:
        low = "-inf" if since is None else since
        page = {} if limit is None else {"start": 0, "num": limit}
        raw = self.client.zrevrangebyscore(self.history_key, "+inf", low, withscores=True, **page)
        return decode_history(raw)

    # -- invalidation channel ---------------------------------------------------------------

    def publish(self, message: str) -> None:
        self.client.publish(self.channel, message)

    def subscribe(self) -> Subscription:
        return _RedisSubscription(self.client.pubsub(), self.channel)


def decode_counters(raw: Mapping[Any, Any]) -> dict[str, int]:
    """The counter hash as ``{name: total}`` (redis-py answers bytes or str keys)."""
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def decode_history(raw: Sequence[Any]) -> list[tuple[int, str]]:
    """``ZREVRANGEBYSCORE ... WITHSCORES`` of the history as ``(at, point)``, oldest first."""
    return [
        (int(score), member.decode() if isinstance(member, bytes) else str(member))
        for member, score in reversed(raw)
    ]


def used_memory(info: Any) -> int | None:
    """``used_memory`` from an ``INFO memory`` answer (summed over a cluster's nodes)."""
    if isinstance(info, dict) and "used_memory" in info:
        return int(info["used_memory"])
    if isinstance(info, dict):  # Redis Cluster: one answer per node
        used = [v.get("used_memory") for v in info.values() if isinstance(v, dict)]
        return sum(int(u) for u in used if u is not None) if used else None
    return None


def describe_client(client: Any) -> dict[str, object]:
    """The database index a redis-py client (sync or async) talks to, for statistics."""
    pool = getattr(client, "connection_pool", None)
    db = (getattr(pool, "connection_kwargs", None) or {}).get("db", 0)
    try:
        return {"redis_db": int(db)}
    except (TypeError, ValueError):
        return {"redis_db": 0}


class _RedisSubscription(Subscription):
    def __init__(self, pubsub: Any, channel: str) -> None:
        self._pubsub = pubsub
        try:
            pubsub.subscribe(channel)
        except Exception:
            self.close()
            raise

    def next_event(self, timeout: float) -> tuple[str, str] | None:
        message = self._pubsub.get_message(timeout=timeout)
        if message is None:
            return None
        kind = message.get("type")
        if kind == "subscribe":
            # Also after redis-py lost the connection and subscribed again by itself.
            return ("subscribed", "")
        if kind == "message":
            data = message["data"]
            return ("message", data.decode() if isinstance(data, bytes) else str(data))
        return None

    def close(self) -> None:
        try:
            self._pubsub.close()
        except Exception:
            log.debug("pubsub close failed")
