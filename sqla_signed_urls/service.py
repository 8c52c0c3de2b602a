"""``CacheService``: the cache operations (clear, warm, stats, refresh), correct at scale.

Every operation goes through the shared-store interface in batches and never walks the whole
key space when it does not have to: clearing scans and unlinks in batches, statistics read the
fleet counters and the expiry index, refreshing reads only the part of the index about to end.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Select, func, inspect, select
from sqlalchemy.orm import Mapper, Session, scoped_session

from . import signals
from ._keys import pk_part
from .cache.base import SharedStore, Write, decode_entry, encode_entry, match_entry, signer_tag
from .core import SignedURLs, URLSpec
from .exceptions import CacheError, ConfigurationError, SigningError
from .signers.base import Signer

__all__ = ["CacheService", "RedisOnlySigner"]

log = logging.getLogger("sqla_signed_urls")

#: What ``session_factory`` may be: a ``sessionmaker``, a ``scoped_session`` or any callable.
SessionFactory = Callable[[], Session]
#: Progress callback of :meth:`CacheService.warm_file_url_cache`: rows just processed.
Progress = Callable[[int], None]


class CacheService:
    """Clear, warm, inspect and refresh the URL cache of one :class:`SignedURLs`.

    The method names are the usual ones of a Flask admin module, so existing code keeps
    working::

        service = CacheService(urls, session_factory=Session, model=File)
        service.clear_file_url_cache(file_id=123)    # one key, in Redis and every process
        service.clear_file_url_cache()               # every key under the prefix
        service.warm_file_url_cache("avatar")        # newest 1,000 avatars signed and cached
        service.get_cache_stats()["hit_ratio"]       # fleet-wide, per key prefix
        service.refresh_expired_urls(within=600)     # renew what ends in the next 10 minutes

    ``session_factory`` and ``model`` are needed only to warm (rows come from the database);
    ``model`` may be left out when ``urls`` is installed on exactly one class. Clearing,
    statistics and refreshing work on Redis alone: a cached value holds the object key it was
    signed for, so refreshing re-signs without reading rows.

    Redis faults raise :class:`~sqla_signed_urls.CacheError`; database faults propagate as
    SQLAlchemy errors. Each operation sends a signal (``cache_cleared``, ``cache_warmed``,
    ``urls_refreshed``; sender: the service) when it succeeds.
    """

    def __init__(
        self,
        urls: SignedURLs,
        *,
        session_factory: SessionFactory | None = None,
        model: type[Any] | None = None,
        attr: str = "url",
        batch_size: int = 500,
    ) -> None:
        if not isinstance(urls, SignedURLs):
            raise ConfigurationError(
                f"CacheService(urls=...): expected a SignedURLs, got {type(urls).__name__}"
            )
        if session_factory is not None and not callable(session_factory):
            raise ConfigurationError(
                "CacheService(session_factory=...): expected a sessionmaker or a callable "
                f"returning a Session, got {type(session_factory).__name__}"
            )
        if model is not None and not isinstance(inspect(model, raiseerr=False), Mapper):
            raise ConfigurationError(
                f"CacheService(model={model!r}): expected a mapped class such as File"
            )
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigurationError(
                f"CacheService(batch_size={batch_size!r}): expected a positive int"
            )
        self.urls = urls
        self.session_factory = session_factory
        self.model = model
        self.attr = attr
        self.batch_size = batch_size
        self._store: SharedStore = urls.store
        self._tag = signer_tag(urls.signer.name)

    def __repr__(self) -> str:
        model = self.model.__name__ if self.model is not None else None
        return f"CacheService(key_prefix={self._store.prefix!r}, model={model})"

    # -- clear ------------------------------------------------------------------------------

    def clear_file_url_cache(self, file_id: Any = None) -> int:
        """Remove one file's cached URL, or with no ``file_id`` every key under the prefix.

        Uses ``SCAN`` + ``UNLINK`` in batches (never ``KEYS`` or ``FLUSHDB``: other data in the
        same Redis db survives) and tells every process to drop the entries from its
        in-process layer. ``file_id`` is the primary key (a tuple for composite keys).
        Returns the number of Redis keys removed.
        """
        store = self._store
        if file_id is None:
            with self._redis("clearing the cache"):
                removed = store.clear()
                store.publish("*")
            self.urls.clear_local()
        else:
            key = self._key_for_id(file_id)
            with self._redis(f"clearing {key}"):
                removed = store.delete_many([key])
                store.publish(key)
            self.urls.clear_local([key])
        suffix = "" if file_id is None else f" for file {file_id}"
        log.info("Cleared %d cached URL(s)%s", removed, suffix)
        signals.cache_cleared.send(self, count=removed, file_id=file_id)
        return removed

    def _key_for_id(self, file_id: Any) -> str:
        if isinstance(file_id, bool) or not isinstance(file_id, (int, str, uuid.UUID, tuple)):
            raise TypeError(
                f"file_id={file_id!r}: expected a primary key (int, str, UUID or a tuple)"
            )
        if isinstance(file_id, int) and file_id < 0:
            raise ValueError(f"file_id={file_id!r}: expected a non-negative primary key")
        if file_id == "" or file_id == ():
            raise ValueError(f"file_id={file_id!r}: expected a non-empty primary key")
        pk = file_id if isinstance(file_id, tuple) else (file_id,)
        spec = self._spec_or_none()
        if spec is not None:
            return spec.key_for_pk(pk)
        return self._store.prefix + pk_part(pk)

    # -- warm -------------------------------------------------------------------------------

    def warm_file_url_cache(
        self,
        file_type: str | None = None,
        *,
        limit: int | None = 1000,
        since: dt.datetime | dt.date | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Sign and cache the URLs of the newest rows of ``model``; return how many are cached.

        Newest means by a ``created_at`` column when the model has one (then by primary key),
        else by primary key, descending; rows without an object key are left out. ``file_type``
        keeps rows whose ``file_type`` column equals it, ``since`` rows created at or after it;
        ``limit=None`` takes every row. Rows are streamed (``yield_per``) and each batch costs
        one ``MGET`` and one pipelined write, so memory stays flat on a million rows. Rows
        already cached with a usable URL are counted but not signed again (nor counted as hits
        or misses). ``progress(n)`` is called after each batch of ``n`` rows.
        """
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise ValueError(f"limit={limit!r}: expected a positive int, or None for every row")
        if file_type is not None and (not isinstance(file_type, str) or not file_type):
            raise ValueError(f"file_type={file_type!r}: expected a non-empty str or None")
        if since is not None and not isinstance(since, dt.date):
            raise TypeError(f"since={since!r}: expected a datetime or date")
        spec = self._target("warm the cache")
        factory = self._need_db("warm the cache")
        statement = self._warm_statement(spec, file_type, since, limit)
        session = factory()
        warmed = 0
        try:
            result = session.execute(statement, execution_options={"yield_per": self.batch_size})
            for rows in result.partitions():
                warmed += self._warm_batch(spec, rows)
                if progress is not None:
                    progress(len(rows))
        finally:
            _release(factory, session)
        kind = f" of type {file_type}" if file_type else ""
        log.info("Warmed %d cached URL(s)%s", warmed, kind)
        signals.cache_warmed.send(self, count=warmed, file_type=file_type)
        return warmed

    def _count_warmable(
        self,
        file_type: str | None = None,
        *,
        limit: int | None = None,
        since: dt.datetime | dt.date | None = None,
    ) -> int:
        """How many rows :meth:`warm_file_url_cache` would look at (for progress bars)."""
        spec = self._target("count rows")
        factory = self._need_db("count rows")
        inner = self._warm_statement(spec, file_type, since, limit).subquery()
        session = factory()
        try:
            return int(session.execute(select(func.count()).select_from(inner)).scalar_one())
        finally:
            _release(factory, session)

    def _warm_statement(
        self,
        spec: URLSpec,
        file_type: str | None,
        since: dt.datetime | dt.date | None,
        limit: int | None,
    ) -> Select[Any]:
        model: Any = spec.cls
        mapper: Mapper[Any] = inspect(model)
        columns = mapper.column_attrs
        object_key = getattr(model, spec.column)
        pk = [getattr(model, name) for name in spec.pk_attrs]
        statement = select(*pk, object_key).where(object_key.is_not(None), object_key != "")
        if file_type is not None:
            if "file_type" not in columns:
                raise ConfigurationError(
                    f"warm_file_url_cache(file_type={file_type!r}): {model.__name__} has no "
                    "file_type column"
                )
            statement = statement.where(model.file_type == file_type)
        order: list[Any] = []
        if "created_at" in columns:
            order.append(model.created_at.desc().nulls_last())
            if since is not None:
                statement = statement.where(model.created_at >= since)
        elif since is not None:
            raise ConfigurationError(
                f"warm_file_url_cache(since=...): {model.__name__} has no created_at column"
            )
        order.extend(column.desc() for column in pk)
        statement = statement.order_by(*order)
        if limit is not None:
            statement = statement.limit(limit)
        return statement

    def _warm_batch(self, spec: URLSpec, rows: Sequence[Any]) -> int:
        items: list[tuple[str, str]] = []
        for row in rows:
            *pk, object_key = row
            if object_key:
                items.append((spec.key_for_pk(pk), object_key))
        if not items:
            return 0
        store = self._store
        with self._redis("warming the cache"):
            raws = store.get_many([key for key, _ in items])
        now = time.time()
        tag, min_validity = self._tag, self.urls.settings.min_validity
        to_sign: list[tuple[str, str]] = []
        for item, raw in zip(items, raws, strict=True):
            entry = match_entry(raw, tag, item[1], now, min_validity)
            if entry is None or not self.urls.signer.url_is_for(entry[1], item[1]):
                to_sign.append(item)
        writes = self._sign(to_sign, {key: spec for key, _ in to_sign}, reason="warm")
        if writes:
            with self._redis("warming the cache"):
                store.set_many(writes)
        return len(items) - len(to_sign) + len(writes)

    # -- stats ------------------------------------------------------------------------------

    def get_cache_stats(self) -> dict[str, Any]:
        """Fleet-wide counters for this key prefix plus what the cache holds.

        ``hits``, ``misses``, ``signed``, ``errors``, ``sign_errors``, ``invalidations`` and
        ``breaker_opened`` add up every process sharing the Redis and prefix (each flushes its
        counters about once a second) and this process's not yet flushed counts. ``hit_ratio``
        is ``hits / (hits + misses)`` (0.0 before any lookup). ``keys`` counts live URL
        entries from the expiry index (bookkeeping keys excluded), ``memory_used_bytes`` is the
        server's ``used_memory`` (``None`` when it does not report it, as the embedded Redis),
        ``redis_db`` the database index.
        """
        store = self._store
        now = int(time.time())
        with self._redis("reading statistics"):
            counters = self.urls.fleet_counters()
            keys = store.live_count(now)
            memory = store.memory_used()
            where = store.describe()
        lookups = counters["hits"] + counters["misses"]
        return {
            "hits": counters["hits"],
            "misses": counters["misses"],
            "hit_ratio": round(counters["hits"] / lookups, 4) if lookups else 0.0,
            "signed": counters["signed"],
            "errors": counters["errors"],
            "sign_errors": counters["sign_errors"],
            "invalidations": counters["invalidations"],
            "breaker_opened": counters["breaker_opened"],
            "keys": keys,
            "memory_used_bytes": memory,
            "redis_db": where.get("redis_db", 0),
            "key_prefix": store.prefix,
        }

    def count_keys(self) -> int:
        """Count URL keys under the prefix exactly with ``SCAN`` (slow on a big key space).

        :meth:`get_cache_stats` reads ``keys`` from the expiry index instead, which costs one
        command whatever the size; the two differ only for entries Redis evicted early.
        """
        with self._redis("counting keys"):
            return sum(len(batch) for batch in self._store.scan_keys(count=1000))

    # -- refresh ----------------------------------------------------------------------------

    def refresh_expired_urls(self, within: int = 600) -> int:
        """Renew the entries whose cache lifetime ends within ``within`` seconds.

        Renewed entries stay cached about another ``cache_ttl`` under the same keys, so pages
        keep being served from the cache. An entry whose URL is still valid long enough is
        extended as it is (a URL is never served with less than ``url_ttl - cache_ttl`` left);
        the others are re-signed for the object key stored in them, as is a value whose URL is
        not one the signer makes for that key. Entries signed by another signer (another
        bucket) are only extended as far as their URLs allow.

        The work is found through the expiry index (``ZRANGEBYSCORE``), so its cost grows with
        the number of entries refreshed, not the number cached. Entries deleted meanwhile (a
        commit, a clear) are never brought back (``SET ... XX``). Returns how many entries
        were renewed.
        """
        if not isinstance(within, int) or isinstance(within, bool) or within < 1:
            raise ValueError(f"within={within!r}: expected a positive whole number of seconds")
        now = int(time.time())
        renewed = 0
        for keys in self._expiring(now, now + within):
            renewed += self._refresh_batch(keys)
        log.info("Refreshed %d cached URL(s) expiring within %d seconds", renewed, within)
        signals.urls_refreshed.send(self, count=renewed, within=within)
        return renewed

    def _expiring(self, now: int, until: int) -> Iterator[list[str]]:
        """The store's expiring keys in batches, with its faults as ``CacheError``."""
        pages = self._store.expiring(now, until, self.batch_size)
        while True:
            with self._redis("refreshing"):
                keys = next(pages, None)
            if keys is None:
                return
            yield keys

    def _refresh_batch(self, keys: list[str]) -> int:
        store = self._store
        settings = self.urls.settings
        with self._redis("refreshing"):
            raws = store.get_many(keys)
        now = int(time.time())
        # The shortest lifetime a signing now gives; extending is as good when it reaches it.
        as_good = (
            self.urls.expires_at(now)
            - settings.min_validity
            - int(settings.cache_ttl * settings.ttl_jitter)
        )
        latest_allowed = now + settings.cache_ttl
        can_sign = not isinstance(self.urls.signer, RedisOnlySigner)
        gone: list[str] = []
        writes: list[Write] = []
        to_sign: list[tuple[str, str]] = []
        for key, raw in zip(keys, raws, strict=True):
            value = decode_entry(raw)
            if value is None:
                gone.append(key)  # expired, deleted, or not one of ours
                continue
            ours = value.tag == self._tag
            if ours and not self.urls.signer.url_is_for(value.url, value.object_key):
                if can_sign:  # not a URL this signer makes for the key: never extend it
                    to_sign.append((key, value.object_key))
                continue
            stretched = min(value.expires_at - settings.min_validity, latest_allowed)
            longer = stretched > value.cache_until and stretched > now
            if ours and can_sign and not (longer and stretched >= as_good):
                to_sign.append((key, value.object_key))
            elif longer:
                renewed = (value.url, value.expires_at, stretched)
                data = encode_entry(renewed, value.tag, value.object_key)
                writes.append((key, data, stretched - now, stretched))
        writes.extend(self._sign(to_sign, self._specs_for(to_sign), reason="refresh"))
        return self._write_renewals(writes, gone)

    def _write_renewals(self, writes: list[Write], gone: list[str]) -> int:
        with self._redis("refreshing"):
            return self._store.renew(writes, gone)

    # -- signing ----------------------------------------------------------------------------

    def _sign(
        self, items: list[tuple[str, str]], specs: dict[str, URLSpec], reason: str
    ) -> list[Write]:
        """Sign ``(key, object_key)`` items as a read would, and return their cache writes.

        Counted in ``signed`` / ``sign_errors`` like any signing, but not as cache misses.
        """
        return self.urls.sign_for_cache(
            [(key, object_key, specs.get(key)) for key, object_key in items], reason=reason
        )

    def _specs_for(self, items: list[tuple[str, str]]) -> dict[str, URLSpec]:
        """The installed URL spec each cache key belongs to, where one does."""
        if not items:
            return {}
        prefixes = {
            spec.prefix: spec for spec in self.urls.installed_specs() if spec.cls is spec.owner
        }
        by_prefix = sorted(prefixes.items(), key=lambda pair: -len(pair[0]))
        found: dict[str, URLSpec] = {}
        for key, _ in items:
            for prefix, spec in by_prefix:
                if key.startswith(prefix) and ":" not in key[len(prefix) :]:
                    found[key] = spec
                    break
        return found

    # -- helpers ----------------------------------------------------------------------------

    @contextmanager
    def _redis(self, doing: str) -> Iterator[None]:
        try:
            yield
        except self._store.errors as exc:
            raise CacheError(
                f"Redis unavailable while {doing}: {type(exc).__name__}: {_one_line(exc)}"
            ) from exc

    def _spec_or_none(self) -> URLSpec | None:
        if self.model is not None:
            return self.urls.url_spec(self.model, self.attr)
        specs = self.urls.installed_specs()
        owners = {spec.owner for spec in specs}
        if len(owners) != 1:
            return None
        (owner,) = owners
        return next((s for s in specs if s.cls is owner and s.attr == self.attr), None)

    def _target(self, doing: str) -> URLSpec:
        spec = self._spec_or_none()
        if spec is None:
            raise ConfigurationError(
                f"to {doing}, CacheService needs model=... (the mapped class with the "
                f"ObjectKey column), installed on this SignedURLs with url attribute {self.attr!r}"
            )
        return spec

    def _ident(self, key: str) -> str:
        """The row id part of a cache key, for log lines."""
        prefix = self._store.prefix
        return key[len(prefix) :] if key.startswith(prefix) else key

    def _need_db(self, doing: str) -> SessionFactory:
        if self.session_factory is None:
            raise ConfigurationError(
                f"to {doing}, CacheService needs session_factory=... (a sessionmaker) "
                "to read rows from the database"
            )
        return self.session_factory


class RedisOnlySigner(Signer):
    """Stands in for the signer where only Redis is known (``sqla-signed-urls --redis-url``).

    A service built on it clears, reports and extends entries, but never re-signs::

        urls = SignedURLs(RedisOnlySigner(), redis="redis://localhost:6379/1")
        CacheService(urls).refresh_expired_urls()   # extends what can be extended
    """

    name = "redis-only"

    def sign(self, object_key: str, *, expires_at: int) -> str:
        raise SigningError("no signer configured: point the command at the app (--app)")


def _release(factory: SessionFactory, session: Session) -> None:
    """Close sessions we opened; leave a ``scoped_session``'s to whoever owns its scope."""
    if not isinstance(factory, scoped_session):
        session.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
