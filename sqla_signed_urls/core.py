"""``SignedURLs``: the one place where the read, sign and invalidate flow lives."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import signals
from ._keys import pk_part
from .cache.base import Servable, SharedStore, encode_entry, match_entry, signer_tag
from .cache.local import LocalCache
from .cache.redis import RedisStore, client_from_url
from .config import Settings
from .exceptions import ConfigurationError, SigningError
from .signers.base import Signer

if TYPE_CHECKING:
    from sqlalchemy.orm import registry

    from .orm import Installation

__all__ = ["SignedURLs", "Stats", "URLSpec"]

log = logging.getLogger("sqla_signed_urls")
_DEBUG = logging.DEBUG
_time = time.time
_MISSING: Any = object()
#: Seconds a concurrent miss waits for the signing already under way before signing itself.
_FLIGHT_WAIT = 10.0
#: A queued cache write: key, encoded value, TTL, end of cache lifetime, id for the log line.
_Write = tuple[str, bytes, int, int, str]

#: Counters kept per process and added up fleet-wide in Redis (``<prefix>#stats``).
COUNTERS = ("hits", "misses", "signed", "errors", "sign_errors", "invalidations", "breaker_opened")


class Stats:
    """This process's counters. Increments are plain attribute adds on the hot path.

    >>> urls.stats.hits, urls.stats.misses
    (41, 3)
    """

    __slots__ = (*COUNTERS, "_flushed")

    def __init__(self) -> None:
        self.hits = self.misses = self.signed = self.errors = 0
        self.sign_errors = self.invalidations = self.breaker_opened = 0
        self._flushed = dict.fromkeys(COUNTERS, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}

    def take_deltas(self) -> dict[str, int]:
        """Counts since the last call (what to add to the fleet-wide totals)."""
        now = self.as_dict()
        deltas = {k: v - self._flushed[k] for k, v in now.items() if v != self._flushed[k]}
        self._flushed = now
        return deltas

    def pending(self) -> dict[str, int]:
        """Counts not yet added to the fleet-wide totals (read-only)."""
        flushed = self._flushed
        return {k: v - flushed[k] for k, v in self.as_dict().items()}

    def restore_deltas(self, deltas: Mapping[str, int]) -> None:
        """Give back deltas that could not be written, so they are sent next time."""
        for name, delta in deltas.items():
            self._flushed[name] -= delta


class URLSpec:
    """One ``ObjectKey`` column of one mapped class, as the hot path needs it."""

    __slots__ = ("attr", "cls", "column", "column_names", "owner", "pk_attrs", "prefix")

    def __init__(
        self,
        cls: type,
        attr: str,
        column: str,
        column_names: frozenset[str],
        pk_attrs: tuple[str, ...],
        prefix: str,
        owner: type,
    ) -> None:
        self.cls = cls
        self.attr = attr
        self.column = column
        self.column_names = column_names
        self.pk_attrs = pk_attrs
        self.prefix = prefix
        self.owner = owner

    def key_for(self, obj: Any) -> str | None:
        """The cache key of ``obj``, or ``None`` while it has no primary key."""
        d = obj.__dict__
        if len(self.pk_attrs) == 1:
            pk = d.get(self.pk_attrs[0], _MISSING)
            if pk is _MISSING:
                pk = getattr(obj, self.pk_attrs[0])
            if pk is None:
                return None
            if type(pk) is int:
                return self.prefix + str(pk)
            return self.prefix + pk_part((pk,))
        values = [getattr(obj, name) for name in self.pk_attrs]
        if any(v is None for v in values):
            return None
        return self.prefix + pk_part(values)

    def key_for_pk(self, pk: Sequence[Any]) -> str:
        return self.prefix + pk_part(pk)


class _Flight:
    """A signing in progress for one key; concurrent misses wait for it (single-flight)."""

    __slots__ = ("done", "object_key", "url")

    def __init__(self, object_key: str) -> None:
        self.object_key = object_key
        self.url: str | None = None
        self.done = threading.Event()


_instances: weakref.WeakSet[SignedURLs] = weakref.WeakSet()


def _after_fork() -> None:
    for urls in list(_instances):
        urls._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class SignedURLs:
    """Cached signed URLs for mapped models: Redis shared cache, in-process layer in front.

    ::

        urls = SignedURLs(signer=OSSSigner(bucket), redis="redis://localhost:6379/1")
        urls.install(Base)            # every ObjectKey column gets its URL attribute
        file.url                      # signed once, then served from the cache
        urls.resolve(files)           # a whole page in one Redis round trip

    ``redis`` is a URL, a ready redis-py client, or ``None`` for ``REDIS_URL`` (and, without
    it, an in-process Redis that caches for this process only). Nothing connects until the
    first URL is read, so an app starts even while Redis is down; when Redis fails, URLs are
    signed directly and a circuit breaker skips Redis for ``retry_after`` seconds.
    """

    def __init__(
        self,
        signer: Signer,
        *,
        redis: Any = None,
        cache_ttl: int = 2700,
        url_ttl: int = 14400,
        key_prefix: str = "file_url:",
        local_cache_size: int = 10_000,
        url_window: int | None = None,
        ttl_jitter: float = 0.1,
        socket_timeout: float = 0.25,
        retry_after: float = 5.0,
    ) -> None:
        if not isinstance(signer, Signer):
            raise ConfigurationError(
                f"SignedURLs(signer=...): expected a Signer (OSSSigner, LocalSigner, ...), "
                f"got {type(signer).__name__}"
            )
        self.settings = Settings(
            cache_ttl=cache_ttl,
            url_ttl=url_ttl,
            key_prefix=key_prefix,
            local_cache_size=local_cache_size,
            url_window=url_window,
            ttl_jitter=ttl_jitter,
            socket_timeout=socket_timeout,
            retry_after=retry_after,
        )
        if signer.max_url_ttl is not None and url_ttl > signer.max_url_ttl:
            raise ConfigurationError(
                f"url_ttl={url_ttl}: {signer!r} signs URLs valid for at most "
                f"{signer.max_url_ttl} seconds; lower url_ttl (FILE_URL_EXPIRES)"
            )
        self.signer = signer
        self._tag = signer_tag(signer.name)
        self.stats = Stats()
        # A client we build from a URL (or the embedded one) is ours to close; a passed one
        # belongs to the caller.
        self._owns_client = redis is None or isinstance(redis, str)
        self.redis = self._make_client(redis)
        self.store: SharedStore = RedisStore(self.redis, key_prefix)
        s = self.settings
        self._window = s.window
        self._min_validity = s.min_validity
        self._jitter = int(s.cache_ttl * s.ttl_jitter)
        self._local = LocalCache(s.local_cache_size) if s.local_cache_size else None
        # L1 is read only while this process is subscribed to invalidations.
        self._local_live = False
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._down_until = 0.0
        self._outage = False
        self._unsent_invalidations: set[str] = set()
        self._background: _Background | None = None
        self._background_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._installation: Installation | None = None
        _instances.add(self)

    @classmethod
    def from_env(cls, signer: Signer | None = None, **overrides: Any) -> SignedURLs:
        """Build from the seed's environment: ``REDIS_URL``, ``FILE_URL_CACHE_TIMEOUT``,
        ``FILE_URL_CACHE_KEY_PREFIX``, ``FILE_URL_EXPIRES`` (and ``OSS_*`` without a signer)."""
        settings, redis_url = Settings.from_env(**overrides)
        return cls.from_settings(settings, signer=signer, redis=redis_url)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, signer: Signer | None = None, redis: Any = None
    ) -> SignedURLs:
        if signer is None:
            from .signers.oss import OSSSigner

            signer = OSSSigner.from_env()
        import dataclasses

        return cls(signer, redis=redis, **dataclasses.asdict(settings))

    def __repr__(self) -> str:
        return (
            f"SignedURLs(signer={self.signer!r}, key_prefix={self.settings.key_prefix!r}, "
            f"cache_ttl={self.settings.cache_ttl}, url_ttl={self.settings.url_ttl})"
        )

    def _make_client(self, redis: Any) -> Any:
        if redis is None:
            redis = os.environ.get("REDIS_URL") or None
            setting = "REDIS_URL"
        else:
            setting = "SignedURLs(redis=...)"
        if redis is None:
            import fakeredis

            log.warning(
                "No REDIS_URL set: using an in-process Redis, so the URL cache is local to "
                "this process; set REDIS_URL to share it"
            )
            return fakeredis.FakeRedis(server=fakeredis.FakeServer())
        if isinstance(redis, str):
            return client_from_url(
                redis, socket_timeout=self.settings.socket_timeout, setting=setting
            )
        if not all(hasattr(redis, name) for name in ("get", "mget", "pipeline", "publish")):
            raise ConfigurationError(
                f"{setting}: expected a redis:// URL, a redis-py client or None, "
                f"got {type(redis).__name__}"
            )
        return redis

    # -- installing -------------------------------------------------------------------------

    def install(self, target: type[Any] | registry) -> None:
        """Give every ``ObjectKey`` column of ``target`` its URL attribute and watch commits.

        ``target`` is a declarative base, a ``registry`` or one mapped class; classes mapped
        later are covered too. Installing one target twice raises ``ConfigurationError``.
        """
        from .orm import Installation

        if self._installation is None:
            self._installation = Installation(self)
        self._installation.add(target)

    def uninstall(self, target: type[Any] | registry | None = None) -> None:
        """Undo :meth:`install` for ``target`` (every target when ``None``)."""
        if self._installation is not None:
            self._installation.remove(target)

    def _spec(self, cls: type, attr: str) -> URLSpec:
        spec = None
        if self._installation is not None:
            spec = self._installation.specs.get(cls, {}).get(attr)
        if spec is None:
            raise ConfigurationError(
                f"{cls.__name__}.{attr} is not a signed-URL attribute: give the class an "
                "ObjectKey column and cover it with SignedURLs.install()"
            )
        return spec

    def url_spec(self, cls: type, attr: str = "url") -> URLSpec:
        """What ``install()`` recorded for ``cls.<attr>`` (column, key prefix, primary key);
        ``ConfigurationError`` when that is not a signed-URL attribute."""
        return self._spec(cls, attr)

    def installed_specs(self) -> list[URLSpec]:
        """One :class:`URLSpec` per installed class and signed-URL attribute."""
        if self._installation is None:
            return []
        return [spec for by_attr in self._installation.specs.values() for spec in by_attr.values()]

    def cache_key(self, obj: Any, attr: str = "url") -> str | None:
        """The Redis key ``obj``'s URL is cached under (``None`` without a primary key)."""
        return self._spec(type(obj), attr).key_for(obj)

    # -- reading ----------------------------------------------------------------------------

    def url_for(self, obj: Any, attr: str = "url") -> str | None:
        """What ``obj.<attr>`` returns: a signed URL, or ``None`` for an empty object key."""
        return self._url(obj, self._spec(type(obj), attr))

    def _url(self, obj: Any, spec: URLSpec) -> str | None:
        try:
            object_key = obj.__dict__[spec.column]
        except KeyError:
            object_key = getattr(obj, spec.column)
        if not object_key:
            return None
        pk = obj.__dict__.get(spec.pk_attrs[0]) if len(spec.pk_attrs) == 1 else None
        key = spec.prefix + str(pk) if type(pk) is int else spec.key_for(obj)
        if key is None:  # not flushed yet: nothing to cache it under
            return self._sign_uncached(spec, obj, object_key)
        local = self._local
        if local is not None and self._local_live:
            entry = local.get(key)
            if entry is not None and entry[0] == object_key and entry[2] > _time():
                self._count_hit(spec, key)
                return entry[1]
        return self._lookup(spec, key, object_key)

    def _lookup(self, spec: URLSpec, key: str, object_key: str) -> str | None:
        store = self._store_if_up()
        if store is not None:
            try:
                raw = store.get_many([key])[0]
            except Exception as exc:
                self._cache_failed(exc)
                store = None
            else:
                if self._outage:
                    self._cache_ok()
                entry = match_entry(raw, self._tag, object_key, _time(), self._min_validity)
                if entry is not None and self.signer.url_is_for(entry[1], object_key):
                    self._remember([(key, entry)])
                    self._count_hit(spec, key)
                    return entry[1]
        self._count_misses(spec, [key])
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None or flight.object_key != object_key
            if leader:
                flight = self._flights[key] = _Flight(object_key)
        assert flight is not None
        if not leader:
            flight.done.wait(_FLIGHT_WAIT)
            if flight.url is not None:
                return flight.url
        try:
            writes: list[_Write] = []
            flight.url = self._sign(spec, [(key, object_key)], writes, store is not None)[key]
            self._write(store, writes)
        finally:
            flight.done.set()
            with self._flights_lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
        return flight.url

    def resolve(self, objects: Iterable[Any], attr: str = "url") -> list[str | None]:
        """URLs for many objects in input order: in-process layer first, then ONE ``MGET``
        for the rest, then at most one pipelined write for what had to be signed.

        Objects of different mapped classes may be mixed::

            for post, url in zip(posts, urls.resolve(posts)): ...
        """
        objects = objects if isinstance(objects, list) else list(objects)
        results: list[str | None] = [None] * len(objects)
        # What the in-process layer did not answer, as parallel lists in input order: the
        # Redis key, object key, result index and spec of each row (cheaper than a tuple each).
        keys: list[str] = []
        object_keys: list[str] = []
        indexes: list[int] = []
        specs: list[URLSpec] = []
        local = self._local
        # An empty L1 (a new process, just cleared) is not asked row by row.
        local_get = local.get if local and self._local_live else None
        hits = self._hit_keys()
        hit_count = 0
        now = _time()
        cls: type | None = None
        for i, obj in enumerate(objects):
            if type(obj) is not cls:  # once per run of one class, not once per row
                cls = type(obj)
                spec = self._spec(cls, attr)
                column, key_for, prefix = spec.column, spec.key_for, spec.prefix
                pk_name = spec.pk_attrs[0] if len(spec.pk_attrs) == 1 else None
            d = obj.__dict__
            object_key = d.get(column, _MISSING)
            if object_key is _MISSING:
                object_key = getattr(obj, column)
            if not object_key:
                continue
            pk = d.get(pk_name) if pk_name is not None else None
            key = prefix + str(pk) if type(pk) is int else key_for(obj)
            if key is None:
                results[i] = self._sign_uncached(spec, obj, object_key)
                continue
            if local_get is not None:
                held = local_get(key)
                if held is not None and held[0] == object_key and held[2] > now:
                    results[i] = held[1]
                    hit_count += 1
                    if hits is not None:
                        hits.setdefault(spec, []).append(key)
                    continue
            keys.append(key)
            object_keys.append(object_key)
            indexes.append(i)
            specs.append(spec)
        self._count_hits(hit_count, hits)
        if not keys:
            return results
        if len(set(keys)) == len(keys):
            self._resolve_shared(keys, object_keys, indexes, specs, results)
            return results
        # An object listed twice (or two loaded copies of one row): each key is read and
        # signed once, the repeats answered afterwards.
        first: dict[str, int] = {}
        for pos, key in enumerate(keys):
            first.setdefault(key, pos)
        keep = sorted(first.values())
        self._resolve_shared(
            [keys[p] for p in keep],
            [object_keys[p] for p in keep],
            [indexes[p] for p in keep],
            [specs[p] for p in keep],
            results,
        )
        for pos, key in enumerate(keys):
            earlier = first[key]
            if earlier == pos:
                continue
            i = indexes[pos]
            if object_keys[pos] == object_keys[earlier]:
                results[i] = results[indexes[earlier]]
            else:  # copies that disagree (another session's edit): each gets its own URL
                results[i] = self._url(objects[i], specs[pos])
        return results

    def _resolve_shared(
        self,
        keys: list[str],
        object_keys: list[str],
        indexes: list[int],
        specs: list[URLSpec],
        results: list[str | None],
    ) -> None:
        store = self._store_if_up()
        raws: Sequence[bytes | str | None] = ()
        if store is not None:
            try:
                raws = store.get_many(keys)
            except Exception as exc:
                self._cache_failed(exc)
                store = None
            else:
                if self._outage:
                    self._cache_ok()
        hits = self._hit_keys()
        fresh: list[tuple[str, Servable]] = []
        missed: list[int] = []  # positions to sign
        if raws:
            tag, min_validity, now = self._tag, self._min_validity, _time()
            # Prefixes for the whole page at once: a batch is cheaper than a key at a time.
            prefixes = self.signer.url_prefixes(object_keys)
            rows = zip(keys, raws, object_keys, prefixes, strict=True)
            for pos, (key, raw, object_key, prefix) in enumerate(rows):
                entry = match_entry(raw, tag, object_key, now, min_validity)
                if entry is None or (prefix is not None and not entry[1].startswith(prefix)):
                    missed.append(pos)
                    continue
                results[indexes[pos]] = entry[1]
                fresh.append((key, entry))
                if hits is not None:
                    hits.setdefault(specs[pos], []).append(key)
            self._remember(fresh)
            self._count_hits(len(fresh), hits)
        else:
            missed = list(range(len(keys)))
        if not missed:
            return
        to_sign: dict[URLSpec, list[tuple[str, str]]] = {}
        position: dict[str, int] = {}
        for pos in missed:
            to_sign.setdefault(specs[pos], []).append((keys[pos], object_keys[pos]))
            position[keys[pos]] = pos
        writes: list[_Write] = []
        for spec, items in to_sign.items():
            self._count_misses(spec, [key for key, _ in items])
            for key, signed in self._sign(spec, items, writes, store is not None).items():
                results[indexes[position[key]]] = signed
        self._write(store, writes)

    def _remember(self, items: list[tuple[str, Servable]]) -> None:
        if self._local is not None and self._local_live and items:
            self._local.set_many(items)

    # -- signing ----------------------------------------------------------------------------

    def expires_at(self, now: float | None = None) -> int:
        """The expiry a URL signed now gets: ``now + url_ttl`` rounded down to the window."""
        now_i = int(_time() if now is None else now)
        return (now_i + self.settings.url_ttl) // self._window * self._window

    def _sign_uncached(self, spec: URLSpec, obj: Any, object_key: str) -> str | None:
        try:
            return self.signer.sign(object_key, expires_at=self.expires_at())
        except Exception as exc:
            self._sign_failed(spec, None, obj, exc)
            return None

    def _sign(
        self,
        spec: URLSpec | None,
        items: list[tuple[str, str]],
        writes: list[_Write],
        cached: bool,
        reason: str = "cache miss",
    ) -> dict[str, str | None]:
        """Sign ``(key, object_key)`` items and queue their cache writes. ``cached``: the
        writes will go to Redis; only then does the L1 keep the URLs too, as it never holds an
        entry without a Redis twin (while the breaker skips Redis, the L1 may already be live
        again, and an entry kept then would be served, Redis never refilled).

        The one place where expiry, cache lifetime and jitter are decided; ``CacheService``
        signs through it too (``spec`` is ``None`` for a key of no installed class).
        """
        now_i = int(_time())
        expires_at = self.expires_at(now_i)
        base_ttl = expires_at - self._min_validity - now_i
        out: dict[str, str | None] = {}
        done: list[str] = []
        fresh: list[tuple[str, Servable]] = []
        info = log.isEnabledFor(logging.INFO)
        for key, object_key in items:
            if info:
                log.info("Generating new signed URL for file %s (%s)", _ident(key, spec), reason)
            try:
                url = self.signer.sign(object_key, expires_at=expires_at)
            except Exception as exc:
                self._sign_failed(spec, key, None, exc)
                out[key] = None
                continue
            out[key] = url
            done.append(key)
            ttl = base_ttl - int(random.random() * (self._jitter + 1))
            if ttl < 1:
                continue
            until = now_i + ttl  # at most expires_at - min_validity: base_ttl says so
            value = encode_entry((url, expires_at, until), self._tag, object_key)
            writes.append((key, value, ttl, until, _ident(key, spec) if info else ""))
            fresh.append((key, (object_key, url, until)))
        if cached:
            self._remember(fresh)
        if done:
            self.stats.signed += len(done)
            if spec is not None and signals.url_signed.receivers:
                signals.url_signed.send(spec.cls, keys=done)
        return out

    def sign_for_cache(
        self, items: Iterable[tuple[str, str, URLSpec | None]], *, reason: str
    ) -> list[tuple[str, bytes, int, int]]:
        """Sign ``(cache key, object key, spec)`` items as a read would, and return the
        ``(key, value, ttl, cache_until)`` writes for the caller to store (``spec`` may be
        ``None`` for a key of no installed class). For maintenance (``CacheService``): counted
        in ``signed``/``sign_errors``, not as misses, and kept out of the L1.
        """
        groups: dict[URLSpec | None, list[tuple[str, str]]] = {}
        for key, object_key, spec in items:
            groups.setdefault(spec, []).append((key, object_key))
        writes: list[_Write] = []
        for spec, group in groups.items():
            self._sign(spec, group, writes, cached=False, reason=reason)
        return [(key, value, ttl, until) for key, value, ttl, until, _ in writes]

    def _write(self, store: SharedStore | None, writes: list[_Write]) -> None:
        if store is None or not writes:
            return
        try:
            store.set_many([(key, value, ttl, until) for key, value, ttl, until, _ in writes])
        except Exception as exc:
            self._cache_failed(exc)
            return
        if log.isEnabledFor(logging.INFO):
            for _, _, ttl, _, ident in writes:
                log.info("Cached URL for file %s for %d seconds", ident, ttl)

    def _sign_failed(self, spec: URLSpec | None, key: str | None, obj: Any, exc: Exception) -> None:
        error = exc if isinstance(exc, SigningError) else SigningError(f"{type(exc).__name__}")
        if error is not exc:
            error.__cause__ = exc
        self.stats.sign_errors += 1
        ident = _ident(key, spec) if key is not None else "(not flushed)"
        log.error("Failed to generate signed URL for file %s: %s", ident, error)
        if spec is not None and signals.sign_failed.receivers:
            signals.sign_failed.send(spec.cls, keys=[key] if key else [], error=error)

    # -- counting ---------------------------------------------------------------------------

    @staticmethod
    def _hit_keys() -> dict[URLSpec, list[str]] | None:
        """Where a batch collects its hit keys per class: only when a ``cache_hit`` receiver
        or the debug log wants them; otherwise hits are just counted."""
        if signals.cache_hit.receivers or log.isEnabledFor(_DEBUG):
            return {}
        return None

    def _count_hit(self, spec: URLSpec, key: str) -> None:
        self.stats.hits += 1
        if signals.cache_hit.receivers:
            signals.cache_hit.send(spec.cls, keys=[key])
        if log.isEnabledFor(_DEBUG):
            log.debug("Using cached URL for file %s", _ident(key, spec))

    def _count_hits(self, count: int, keys_by_spec: dict[URLSpec, list[str]] | None) -> None:
        """Count ``count`` hits; with keys collected, send ``cache_hit`` and log them."""
        self.stats.hits += count
        for spec, keys in (keys_by_spec or {}).items():
            if signals.cache_hit.receivers:
                signals.cache_hit.send(spec.cls, keys=keys)
            if log.isEnabledFor(_DEBUG):
                for key in keys:
                    log.debug("Using cached URL for file %s", _ident(key, spec))

    def _count_misses(self, spec: URLSpec, keys: list[str]) -> None:
        self.stats.misses += len(keys)
        if signals.cache_miss.receivers:
            signals.cache_miss.send(spec.cls, keys=keys)

    # -- invalidating -----------------------------------------------------------------------

    def invalidate(self, *objects: Any) -> int:
        """Drop the cached URLs of ``objects`` now (commits do this by themselves)."""
        by_class: dict[type, list[str]] = {}
        if self._installation is not None:
            for obj in objects:
                for spec in self._installation.specs.get(type(obj), {}).values():
                    key = spec.key_for(obj)
                    if key is not None:
                        by_class.setdefault(spec.cls, []).append(key)
        return self.invalidate_keys(by_class)

    def invalidate_keys(self, keys_by_class: Mapping[type, Iterable[str]]) -> int:
        """Drop cache keys everywhere: this process, Redis, and every process's L1.

        Sends ``url_invalidated`` once per class. Never raises for a Redis fault: keys that
        could not be deleted are retried when Redis is back (and a stale value is never
        served anyway, because its fingerprint no longer matches the row).
        """
        keys = sorted({key for ks in keys_by_class.values() for key in ks})
        if not keys:
            return 0
        if self._local is not None:
            self._local.discard(keys)
        self.stats.invalidations += len(keys)
        removed = self._delete_shared(keys)
        for cls, ks in keys_by_class.items():
            ks = sorted(set(ks))
            if ks and signals.url_invalidated.receivers:
                signals.url_invalidated.send(cls, keys=ks)
        return removed

    def _delete_shared(self, keys: list[str]) -> int:
        store = self._store_if_up()
        if store is not None:
            try:
                removed = store.delete_many(keys)
                store.publish("\n".join(keys))
            except Exception as exc:
                self._cache_failed(exc)
            else:
                self._cache_ok()
                return removed
        self._unsent_invalidations.update(keys)
        return 0

    def clear_local(self, keys: Iterable[str] | None = None) -> None:
        """Drop ``keys`` (every entry when ``None``) from this process's in-process layer."""
        if self._local is None:
            return
        if keys is None:
            self._local.clear()
        else:
            self._local.discard(keys)

    # -- Redis health -----------------------------------------------------------------------

    def _store_if_up(self) -> SharedStore | None:
        if self._down_until and _time() < self._down_until:
            return None
        self._ensure_background()
        return self.store

    def _cache_failed(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self._local_live = False
        if self._local is not None:
            self._local.clear()
        if not self._outage:
            self._outage = True
            self.stats.breaker_opened += 1
            log.warning(
                "Redis unavailable (%s: %s); signing URLs directly, retrying every %gs",
                type(exc).__name__,
                exc,
                self.settings.retry_after,
            )
        self._down_until = _time() + self.settings.retry_after
        background = self._background
        if background is not None:
            background.reconnect.set()
        if signals.cache_error.receivers:
            signals.cache_error.send(self, error=exc)

    def _cache_ok(self) -> None:
        if self._outage:
            self._outage = False
            self._down_until = 0.0
            log.warning("Redis reachable again; caching signed URLs")

    @property
    def redis_available(self) -> bool:
        """False while the circuit breaker skips Redis."""
        return not self._outage

    # -- background: invalidation listener and stats flusher ---------------------------------

    def _ensure_background(self) -> None:
        if self._background is not None:
            return
        with self._background_lock:
            if self._background is None:
                self._background = _Background(self)
                self._background.start()

    def flush_stats(self) -> None:
        """Add this process's counters to the fleet-wide totals in Redis now."""
        with self._flush_lock:  # the background thread flushes too: never count twice
            deltas = self.stats.take_deltas()
            if not deltas:
                return
            try:
                if isinstance(self.store, RedisStore):
                    self.store.add_counters(deltas)
            except Exception:
                self.stats.restore_deltas(deltas)
                raise

    def fleet_counters(self) -> dict[str, int]:
        """Fleet-wide totals for this key prefix, this process's unflushed counts included."""
        with self._flush_lock:
            totals = self.store.read_counters() if isinstance(self.store, RedisStore) else {}
            pending = self.stats.pending()
        return {name: totals.get(name, 0) + pending[name] for name in COUNTERS}

    def close(self) -> None:
        """Stop the background thread (flushing counters first), drop the L1, and close the
        Redis client when ``SignedURLs`` built it (a passed client is left to its owner)."""
        background, self._background = self._background, None
        if background is not None:
            background.stop()
        self._local_live = False
        self.clear_local()
        if self._owns_client:
            try:
                self.redis.close()
            except Exception:  # closing must not fail the app's shutdown
                log.debug("could not close the Redis client")

    def _forked(self) -> None:
        self._background = None
        self._background_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._flights_lock = threading.Lock()
        self._flights = {}
        self._local_live = False
        self.clear_local()

    def _on_message(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        if self._local is None:
            return
        if text == "*":
            self._local.clear()
        else:
            self._local.discard(text.split("\n"))


class _Background(threading.Thread):
    """Subscribes to invalidations (keeping the L1 honest) and flushes counters every second.

    While it is not subscribed the L1 is neither read nor filled; each (re)subscription starts
    from an empty L1, so nothing published during an outage is missed.
    """

    FLUSH_EVERY = 1.0

    def __init__(self, urls: SignedURLs) -> None:
        super().__init__(name="sqla-signed-urls", daemon=True)
        self._urls = weakref.ref(urls)
        self.stopping = threading.Event()
        self.reconnect = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)

    def run(self) -> None:
        while not self.stopping.is_set():
            urls = self._urls()
            if urls is None:
                return
            retry_after = urls.settings.retry_after
            try:
                self._session(urls)
            except Exception as exc:
                urls._local_live = False
                urls.clear_local()
                log.debug("invalidation listener stopped: %s", type(exc).__name__)
            finally:
                del urls
            self.stopping.wait(retry_after)
        urls = self._urls()
        if urls is not None:
            try:
                urls.flush_stats()
            except Exception:
                log.debug("could not flush counters at close")

    def _session(self, urls: SignedURLs) -> None:
        store = urls.store
        if not isinstance(store, RedisStore):
            return
        pubsub = store.client.pubsub()
        try:
            pubsub.subscribe(store.channel)
            # The L1 may only be trusted once the server has confirmed the subscription.
            deadline = time.monotonic() + max(1.0, urls.settings.socket_timeout * 4)
            while True:
                message = pubsub.get_message(timeout=urls.settings.socket_timeout)
                if message is not None and message.get("type") == "subscribe":
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("no confirmation of the invalidation subscription")
            self.reconnect.clear()
            urls.clear_local()
            urls._local_live = True
            self._retry_invalidations(urls)
            next_flush = time.monotonic() + self.FLUSH_EVERY
            while not self.stopping.is_set() and not self.reconnect.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message is not None:
                    if message.get("type") == "message":
                        urls._on_message(message["data"])
                    elif message.get("type") == "subscribe":
                        # redis-py lost the connection and subscribed again by itself: what
                        # was published in between is lost, so the L1 starts over
                        urls.clear_local()
                if time.monotonic() >= next_flush:
                    urls.flush_stats()
                    next_flush = time.monotonic() + self.FLUSH_EVERY
        finally:
            urls._local_live = False
            try:
                pubsub.close()
            except Exception:
                log.debug("pubsub close failed")

    @staticmethod
    def _retry_invalidations(urls: SignedURLs) -> None:
        if not urls._unsent_invalidations:
            return
        keys = sorted(urls._unsent_invalidations)
        urls.store.delete_many(keys)
        urls.store.publish("\n".join(keys))
        urls._unsent_invalidations.difference_update(keys)


def _ident(key: str | None, spec: URLSpec | None) -> str:
    """The row id part of a cache key, for the seed's log lines."""
    if key is None:
        return "?"
    if spec is not None and key.startswith(spec.prefix):
        return key[len(spec.prefix) :]
    return key
