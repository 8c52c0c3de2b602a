"""``CacheService``: the cache operations (clear, warm, stats, history, refresh), correct at
scale.

Every operation goes through the shared-store interface in batches and never walks the whole
key space when it does not have to: clearing scans and unlinks in batches, statistics read the
fleet counters and the expiry index, refreshing reads only the part of the index about to end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect as pyinspect
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Select, func, inspect, select
from sqlalchemy.orm import Mapper, Session, scoped_session

from . import signals
from ._keys import bare_key, pk_part
from .cache.base import (
    AsyncSharedStore,
    SharedStore,
    Write,
    decode_entry,
    encode_entry,
    match_entry,
    signer_tag,
)
from .core import SignedURLs, URLSpec
from .counters import COUNTERS
from .exceptions import CacheError, ConfigurationError, SigningError
from .history import decode_points, histogram_edges
from .signers.base import Signer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["CacheService", "RedisOnlySigner"]

log = logging.getLogger("sqla_signed_urls")

#: What ``session_factory`` may be: a ``sessionmaker``, a ``scoped_session`` or any callable.
SessionFactory = Callable[[], Session]
#: What ``async_session_factory`` may be: an ``async_sessionmaker``, an
#: ``async_scoped_session`` or any callable returning an ``AsyncSession``.
AsyncSessionFactory = Callable[[], "AsyncSession"]
#: Progress callback of :meth:`CacheService.warm_file_url_cache`: rows just processed.
Progress = Callable[[int], None]

_T = TypeVar("_T")
_F = TypeVar("_F")
#: One store call an operation's steps ask for: what it is doing (for the ``CacheError``),
#: the store method's name and its arguments. The sync and async twins of an operation run the
#: same steps (a generator that receives each call's result) on the store or the async store,
#: so they differ only in how a call is made.
_Call = tuple[str, str, tuple[Any, ...]]
_Steps = Generator[_Call, Any, _T]


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

    Each operation has an awaitable twin for async apps (``aclear_file_url_cache``,
    ``awarm_file_url_cache``, ``aget_cache_stats``, ``arefresh_expired_urls``): the same
    results, errors, signals and log lines, with Redis reached through ``urls.async_store``
    (``redis.asyncio``) and rows streamed from ``async_session_factory``::

        service = CacheService(urls, async_session_factory=async_session, model=File)
        await service.awarm_file_url_cache("avatar")

    ``session_factory`` (or ``async_session_factory``) and ``model`` are needed only to warm
    (rows come from the database); ``model`` may be left out when ``urls`` is installed on
    exactly one class. Clearing, statistics and refreshing work on Redis alone: a cached value
    holds the object key it was signed for, so refreshing re-signs without reading rows.

    Redis faults raise :class:`~sqla_signed_urls.CacheError`; database faults propagate as
    SQLAlchemy errors. Each operation sends a signal (``cache_cleared``, ``cache_warmed``,
    ``urls_refreshed``; sender: the service) when it succeeds.
    """

    def __init__(
        self,
        urls: SignedURLs,
        *,
        session_factory: SessionFactory | None = None,
        async_session_factory: AsyncSessionFactory | None = None,
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
        if async_session_factory is not None and not callable(async_session_factory):
            raise ConfigurationError(
                "CacheService(async_session_factory=...): expected an async_sessionmaker or a "
                f"callable returning an AsyncSession, got {type(async_session_factory).__name__}"
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
        self.async_session_factory = async_session_factory
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
        keys = None if file_id is None else self._keys_for_id(file_id)
        return self._cleared(self._drive(self._clear_steps(keys)), file_id, keys)

    async def aclear_file_url_cache(self, file_id: Any = None) -> int:
        """:meth:`clear_file_url_cache` for async apps, through ``urls.async_store``."""
        keys = None if file_id is None else self._keys_for_id(file_id)
        return self._cleared(await self._adrive(self._clear_steps(keys)), file_id, keys)

    def _clear_steps(self, keys: list[str] | None) -> _Steps[int]:
        doing = "clearing the cache" if keys is None else f"clearing {keys[0]}"
        if keys is None:
            removed = yield (doing, "clear", ())
        else:
            removed = yield (doing, "delete_many", (keys,))
        yield (doing, "publish", ("\n".join(keys) if keys else "*",))
        return int(removed)

    def _cleared(self, removed: int, file_id: Any, keys: list[str] | None) -> int:
        self.urls.clear_local(keys)
        suffix = "" if file_id is None else f" for file {file_id}"
        log.info("Cleared %d cached URL(s)%s", removed, suffix)
        signals.cache_cleared.send(self, count=removed, file_id=file_id)
        return removed

    def _keys_for_id(self, file_id: Any) -> list[str]:
        """The keys of one file: its URL's, and its variants'."""
        key = self._key_for_id(file_id)
        spec = self._spec_or_none()
        if spec is None:
            return [key]
        pk = file_id if isinstance(file_id, tuple) else (file_id,)
        return [key] + [variant.key_for_pk(pk) for variant in self._warm_group(spec)[1:]]

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
        spec, factory, statement = self._warm_plan(file_type, limit, since, self._need_db)
        session = factory()
        warmed = 0
        try:
            result = session.execute(statement, execution_options={"yield_per": self.batch_size})
            for rows in result.partitions():
                warmed += self._drive(self._warm_steps(spec, rows, progress))
        finally:
            _release(factory, session)
        return self._warmed(warmed, file_type)

    async def awarm_file_url_cache(
        self,
        file_type: str | None = None,
        *,
        limit: int | None = 1000,
        since: dt.datetime | dt.date | None = None,
        progress: Progress | None = None,
    ) -> int:
        """:meth:`warm_file_url_cache` for async apps: rows streamed from
        ``async_session_factory`` (``AsyncSession.stream`` with ``yield_per``, so memory stays
        flat), Redis reached through ``urls.async_store``."""
        spec, factory, statement = self._warm_plan(file_type, limit, since, self._need_async_db)
        session = factory()
        warmed = 0
        try:
            result = await session.stream(statement.execution_options(yield_per=self.batch_size))
            async for rows in result.partitions():
                warmed += await self._adrive(self._warm_steps(spec, rows, progress))
        finally:
            await _arelease(factory, session)
        return self._warmed(warmed, file_type)

    def _warm_plan(
        self,
        file_type: str | None,
        limit: int | None,
        since: dt.datetime | dt.date | None,
        need_db: Callable[[str], _F],
    ) -> tuple[URLSpec, _F, Select[Any]]:
        """Check a warm's arguments; return the spec, the session factory and the query."""
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise ValueError(f"limit={limit!r}: expected a positive int, or None for every row")
        if file_type is not None and (not isinstance(file_type, str) or not file_type):
            raise ValueError(f"file_type={file_type!r}: expected a non-empty str or None")
        if since is not None and not isinstance(since, dt.date):
            raise TypeError(f"since={since!r}: expected a datetime or date")
        spec = self._target("warm the cache")
        factory = need_db("warm the cache")
        return spec, factory, self._warm_statement(spec, file_type, since, limit)

    def _warmed(self, warmed: int, file_type: str | None) -> int:
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
        if any(s.shape is not None for s in self._warm_group(spec)):
            # Variants and download names are made from the whole row: load the objects
            # (streamed all the same), and never prefetch them as a page.
            statement = select(model).execution_options(prefetch_urls=False)
        else:
            statement = select(*pk, object_key)
        statement = statement.where(object_key.is_not(None), object_key != "")
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

    def _warm_steps(
        self, spec: URLSpec, rows: Sequence[Any], progress: Progress | None
    ) -> _Steps[int]:
        """Warm one batch of rows: one ``get_many``, sign what is not usable, one ``set_many``;
        then report the batch to ``progress``."""
        warmed = yield from self._warm_batch(spec, rows)
        if progress is not None:
            progress(len(rows))
        return warmed

    def _warm_group(self, spec: URLSpec) -> list[URLSpec]:
        """``spec`` and the variants of its column: what a warm caches for each row."""
        return [spec] + [
            other
            for other in self.urls._installation.specs.get(spec.cls, {}).values()
            if other.variant is not None and other.column == spec.column
        ]

    def _warm_batch(self, spec: URLSpec, rows: Sequence[Any]) -> _Steps[int]:
        items: list[tuple[str, str]] = []
        group = self._warm_group(spec)
        for row in rows:
            if len(group) == 1 and spec.shape is None:
                *pk, object_key = row
                if object_key:
                    items.append((spec.key_for_pk(pk), object_key))
                continue
            obj = row[0]
            object_key = getattr(obj, spec.column)
            for member in group if object_key else ():
                match_key, key = member.match_key(obj, object_key), member.key_for(obj)
                if match_key is not None and key is not None:
                    items.append((key, match_key))
        if not items:
            return 0
        raws = yield ("warming the cache", "get_many", ([key for key, _ in items],))
        now = time.time()
        tag, min_validity = self._tag, self.urls.settings.min_validity
        to_sign: list[tuple[str, str]] = []
        for item, raw in zip(items, raws, strict=True):
            entry = match_entry(raw, tag, item[1], now, min_validity)
            if entry is None or not self.urls.signer.url_is_for(entry[1], bare_key(item[1])):
                to_sign.append(item)
        writes = self._sign(to_sign, {key: spec for key, _ in to_sign}, reason="warm")
        if writes:
            yield ("warming the cache", "set_many", (writes,))
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
        with self._redis("reading statistics"):
            counters = self.urls.fleet_counters()
        return self._drive(self._stats_steps(counters))

    async def aget_cache_stats(self) -> dict[str, Any]:
        """:meth:`get_cache_stats` for async apps, through ``urls.async_store``."""
        astore = self.urls.async_store
        with _faults(astore.errors, "reading statistics"):
            counters = await self._afleet_counters(astore)
        return await self._adrive(self._stats_steps(counters))

    async def _afleet_counters(self, astore: AsyncSharedStore) -> dict[str, int]:
        """``urls.fleet_counters()`` read through the async store.

        The sync read holds the counters' lock so that a flush (the background thread adding
        this process's counts to the totals) never falls between reading the totals and the
        unflushed counts; a coroutine must not hold a thread lock across an await, so this
        reads without it and reads again when a flush overlapped (about once a second, for
        one round trip).
        """
        stats = self.urls.stats
        while True:
            flushed = stats._flushed  # replaced, never changed in place, by every flush
            if not stats._lock.locked():
                totals = await astore.read_counters()
                pending = stats.pending()
                if stats._flushed is flushed and not stats._lock.locked():
                    return {name: totals.get(name, 0) + pending[name] for name in COUNTERS}
            await asyncio.sleep(0.001)

    def _stats_steps(self, counters: dict[str, int]) -> _Steps[dict[str, Any]]:
        now = int(time.time())
        keys = int((yield ("reading statistics", "live_count", (now,))))
        memory: int | None = yield ("reading statistics", "memory_used", ())
        where: dict[str, object] = yield ("reading statistics", "describe", ())
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
            "key_prefix": self._store.prefix,
        }

    def count_keys(self) -> int:
        """Count URL keys under the prefix exactly with ``SCAN`` (slow on a big key space).

        :meth:`get_cache_stats` reads ``keys`` from the expiry index instead, which costs one
        command whatever the size; the two differ only for entries Redis evicted early.
        """
        with self._redis("counting keys"):
            return sum(len(batch) for batch in self._store.scan_keys(count=1000))

    # -- history ----------------------------------------------------------------------------

    def get_cache_history(
        self, since: float | dt.datetime | None = None, *, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The fleet history of this key prefix, oldest first: one point per
        ``history_interval`` (a minute) in which the fleet served URLs, the newest
        ``history_points`` (24 h) of them kept in Redis under ``<prefix>#history``.

        Each point is ``{"time": <Unix seconds>, "hits": ..., "misses": ..., "signed": ...,
        "errors": ..., "sign_errors": ..., "invalidations": ..., "breaker_opened": ...,
        "keys": ..., "memory_used_bytes": ...}``: the running totals of the fleet counters
        (as in :meth:`get_cache_stats`; subtract consecutive points for what happened in
        between), the live key count and Redis memory at that time. ``since`` (a datetime or
        Unix seconds) keeps the points at or after it, ``limit`` the newest ``limit``. One
        Redis command.
        """
        return self._drive(self._history_steps(_since(since), _limit(limit)))

    async def aget_cache_history(
        self, since: float | dt.datetime | None = None, *, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`get_cache_history` for async apps, through ``urls.async_store``."""
        return await self._adrive(self._history_steps(_since(since), _limit(limit)))

    def _history_steps(self, since: int | None, limit: int | None) -> _Steps[list[dict[str, Any]]]:
        raw = yield ("reading the history", "read_history", (since, limit))
        return decode_points(raw)

    def get_expiry_histogram(self) -> list[dict[str, Any]]:
        """Cached entries by time left, from the expiry index: what
        :meth:`refresh_expired_urls` would act on. A list of buckets
        ``{"from_seconds": 0, "to_seconds": 300, "keys": 12}`` of equal width up to
        ``cache_ttl``, the last one open (``"to_seconds": None``: entries written under a
        longer ``cache_ttl``). A fixed number of ``ZCOUNT`` in one round trip, whatever the
        size of the cache.
        """
        return self._drive(self._histogram_steps())

    async def aget_expiry_histogram(self) -> list[dict[str, Any]]:
        """:meth:`get_expiry_histogram` for async apps, through ``urls.async_store``."""
        return await self._adrive(self._histogram_steps())

    def _histogram_steps(self) -> _Steps[list[dict[str, Any]]]:
        edges = histogram_edges(self.urls.settings.cache_ttl)
        now = int(time.time())
        counts = yield ("reading the expiry index", "live_counts", (now, edges))
        buckets: list[dict[str, Any]] = []
        for i, low in enumerate(edges):
            high = edges[i + 1] if i + 1 < len(edges) else None
            keys = counts[i] - (counts[i + 1] if high is not None else 0)
            buckets.append({"from_seconds": low, "to_seconds": high, "keys": max(0, keys)})
        return buckets

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
        now = _check_within(within)
        renewed = 0
        for keys in self._expiring(now, now + within):
            renewed += self._drive(self._refresh_batch(keys))
        return self._refreshed(renewed, within)

    async def arefresh_expired_urls(self, within: int = 600) -> int:
        """:meth:`refresh_expired_urls` for async apps, through ``urls.async_store``."""
        now = _check_within(within)
        astore = self.urls.async_store
        pages = astore.expiring(now, now + within, self.batch_size)
        renewed = 0
        try:
            while True:
                with _faults(astore.errors, "refreshing"):
                    keys = await anext(pages, None)
                if keys is None:
                    break
                renewed += await self._adrive(self._refresh_batch(keys))
        finally:
            await _aclose(pages)
        return self._refreshed(renewed, within)

    def _refreshed(self, renewed: int, within: int) -> int:
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

    def _refresh_batch(self, keys: list[str]) -> _Steps[int]:
        """Renew one batch of expiring keys: one ``get_many``, decide for each entry whether
        to extend it, re-sign it or drop its index entry, then one ``renew``."""
        settings = self.urls.settings
        raws = yield ("refreshing", "get_many", (keys,))
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
            if ours and not self.urls.signer.url_is_for(value.url, bare_key(value.object_key)):
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
        return int((yield ("refreshing", "renew", (writes, gone))))

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

    def _redis(self, doing: str) -> AbstractContextManager[None]:
        """A context turning the store's faults into ``CacheError``."""
        return _faults(self._store.errors, doing)

    def _drive(self, steps: _Steps[_T]) -> _T:
        """Run an operation's steps on the store."""
        return _run(steps, self._store, self._store.errors)

    async def _adrive(self, steps: _Steps[_T]) -> _T:
        """Run an operation's steps on the async store, awaiting each call."""
        astore = self.urls.async_store
        return await _arun(steps, astore, astore.errors)

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

    def _need_async_db(self, doing: str) -> AsyncSessionFactory:
        if self.async_session_factory is None:
            raise ConfigurationError(
                f"to {doing} from a coroutine, CacheService needs async_session_factory=... "
                "(an async_sessionmaker) to read rows from the database"
            )
        return self.async_session_factory


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


async def _arelease(factory: AsyncSessionFactory, session: AsyncSession) -> None:
    """:func:`_release` for an ``AsyncSession``."""
    from sqlalchemy.ext.asyncio import async_scoped_session

    if not isinstance(factory, async_scoped_session):
        await session.close()


def _since(since: float | dt.datetime | None) -> int | None:
    """``since`` of a history read as Unix seconds (a naive datetime is local time)."""
    if since is None:
        return None
    if isinstance(since, dt.datetime):
        return math.ceil(since.timestamp())
    if isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since):
        raise TypeError(f"since={since!r}: expected a datetime, Unix seconds or None")
    return math.ceil(since)


def _limit(limit: int | None) -> int | None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit={limit!r}: expected a positive int, or None for every point")
    return limit


def _check_within(within: int) -> int:
    """Refuse a bad ``within``; return now (Unix seconds)."""
    if not isinstance(within, int) or isinstance(within, bool) or within < 1:
        raise ValueError(f"within={within!r}: expected a positive whole number of seconds")
    return int(time.time())


@contextmanager
def _faults(errors: tuple[type[BaseException], ...], doing: str) -> Iterator[None]:
    """Turn a store's faults (``errors``) into ``CacheError``."""
    try:
        yield
    except errors as exc:
        raise CacheError(
            f"Redis unavailable while {doing}: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc


class _Stepper(Generic[_T]):
    """Iterates over the store calls an operation's steps ask for; set :attr:`result` to each
    call's result before asking for the next; :attr:`value` is the operation's result."""

    def __init__(self, steps: _Steps[_T]) -> None:
        self._steps = steps
        self.result: Any = None
        self.value: _T

    def __iter__(self) -> Iterator[_Call]:
        while True:
            try:
                call = self._steps.send(self.result)
            except StopIteration as done:
                self.value = done.value
                return
            yield call


def _run(steps: _Steps[_T], store: SharedStore, errors: tuple[type[BaseException], ...]) -> _T:
    """Make each call ``steps`` asks for on ``store``, sending back its result."""
    stepper = _Stepper(steps)
    for doing, name, args in stepper:
        with _faults(errors, doing):
            stepper.result = getattr(store, name)(*args)
    return stepper.value


async def _arun(
    steps: _Steps[_T], store: AsyncSharedStore, errors: tuple[type[BaseException], ...]
) -> _T:
    """:func:`_run` on an async store: coroutine methods are awaited."""
    stepper = _Stepper(steps)
    for doing, name, args in stepper:
        with _faults(errors, doing):
            result = getattr(store, name)(*args)  # describe() is a plain method
            stepper.result = await result if pyinspect.isawaitable(result) else result
    return stepper.value


async def _aclose(pages: AsyncIterator[Any]) -> None:
    """Close an async iterator we stopped reading (an async generator's ``aclose``)."""
    close = getattr(pages, "aclose", None)
    if close is not None:
        await close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
