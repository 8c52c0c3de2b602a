"""``SignedURLs``: the one place where the read, sign, write and invalidate flow lives.

Everything stateful around the flow has its own module with a narrow interface: the shared
store (:mod:`.cache.redis`), the fail-open policy (:mod:`.cache.guard`), the invalidation
channel and its background thread (:mod:`.cache.channel`), the counters (:mod:`.counters`) and
the ORM glue (:mod:`.orm`). See ``docs/architecture.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.util import concurrency as _concurrency

from . import signals
from ._keys import EXTRAS, URLSpec, bare_key, split_match_key
from .cache.base import (
    AsyncSharedStore,
    Servable,
    SharedStore,
    encode_entry,
    match_entries,
    match_entry,
    signer_tag,
)
from .cache.channel import InvalidationChannel
from .cache.guard import FailOpen
from .cache.local import LocalCache
from .cache.redis import RedisStore, make_client
from .config import Settings
from .counters import COUNTERS, Stats
from .exceptions import ConfigurationError, SigningError
from .history import HistoryRecorder
from .orm import Installation, PrefetchURLs
from .signers.base import Signer

if TYPE_CHECKING:
    from sqlalchemy.orm import registry

__all__ = ["COUNTERS", "SignedURLs", "Stats", "URLSpec"]

log = logging.getLogger("sqla_signed_urls")
_DEBUG = logging.DEBUG
_time = time.time
_MISSING: Any = object()
#: The extra parameters of a match key that are response headers (the rest are signed as is).
_RESPONSE_HEADERS = frozenset({"response-content-disposition", "response-content-type"})


#: Seconds a concurrent miss waits for the signing already under way before signing itself.
_FLIGHT_WAIT = 10.0
#: A queued cache write: key, encoded value, TTL, end of cache lifetime, id for the log line.
_Write = tuple[str, bytes, int, int, str]
#: Cache writes a coroutine's plain ``obj.url`` may leave scheduled on the loop at once; past it
#: a write is dropped (and counted), never awaited by the reader.
MAX_SCHEDULED_WRITES = 1000
#: How many loaded instances one prefetch round trip covers at most.
PREFETCH_BATCH_SIZE = 1000
#: The event loop running in this thread, or ``None`` (a C call: cheap on every L1 miss).
_running_loop = asyncio._get_running_loop
_in_greenlet = _concurrency.in_greenlet
_await_only = _concurrency.await_only


class _Flight:
    """A signing in progress for one key; concurrent misses wait for it (single-flight)."""

    __slots__ = ("done", "object_key", "url")

    def __init__(self, object_key: str) -> None:
        self.object_key = object_key
        self.url: str | None = None
        self.done = threading.Event()


class _Page:
    """The rows of a ``resolve()`` the in-process layer did not answer, each key once.

    An object listed twice (or two loaded copies of one row) is read and signed once; its
    repeats are answered from the first afterwards (:meth:`disagreeing`).
    """

    __slots__ = ("indexes", "keys", "object_keys", "repeats", "shaped", "specs")

    def __init__(
        self,
        keys: list[str],
        object_keys: list[str],
        indexes: list[int],
        specs: list[URLSpec],
        shaped: bool = False,
    ) -> None:
        #: Whether some object keys are match keys with extra parameters (variants, names).
        self.shaped = shaped
        self.repeats: list[tuple[int, int, URLSpec, bool]] = []
        if len(set(keys)) != len(keys):
            first: dict[str, int] = {}
            for pos, key in enumerate(keys):
                first.setdefault(key, pos)
            for pos, key in enumerate(keys):
                earlier = first[key]
                if earlier != pos:
                    same = object_keys[pos] == object_keys[earlier]
                    self.repeats.append((indexes[pos], indexes[earlier], specs[pos], same))
            keep = sorted(first.values())
            keys = [keys[p] for p in keep]
            object_keys = [object_keys[p] for p in keep]
            indexes = [indexes[p] for p in keep]
            specs = [specs[p] for p in keep]
        self.keys = keys
        self.object_keys = object_keys
        self.indexes = indexes
        self.specs = specs

    def disagreeing(self, results: list[str | None]) -> list[tuple[int, URLSpec]]:
        """Fill the repeats that agree with their first copy; return the rows whose copies
        disagree (another session's edit), which each need a read of their own."""
        alone: list[tuple[int, URLSpec]] = []
        for i, earlier, spec, same in self.repeats:
            if same:
                results[i] = results[earlier]
            else:
                alone.append((i, spec))
        return alone


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

    Tunables come as a :class:`~sqla_signed_urls.Settings` (``settings=``), as keywords
    (``cache_ttl=600``), or both (keywords win). ``redis`` is a URL, a ready redis-py client, or
    ``None`` for ``REDIS_URL`` (and, without it, an in-process Redis that caches for this
    process only); ``store`` takes any other :class:`~sqla_signed_urls.cache.base.SharedStore`.
    Nothing connects until the first URL is read, so an app starts even while Redis is down;
    when Redis fails, URLs are signed directly and a circuit breaker skips Redis for
    ``retry_after`` seconds.
    """

    def __init__(
        self,
        signer: Signer,
        *,
        settings: Settings | None = None,
        redis: Any = None,
        store: SharedStore | None = None,
        async_redis: Any = None,
        **options: Any,
    ) -> None:
        if not isinstance(signer, Signer):
            raise ConfigurationError(
                f"SignedURLs(signer=...): expected a Signer (OSSSigner, LocalSigner, ...), "
                f"got {type(signer).__name__}"
            )
        self.settings = s = Settings.merge(settings, **options)
        if signer.max_url_ttl is not None and s.url_ttl > signer.max_url_ttl:
            raise ConfigurationError(
                f"url_ttl={s.url_ttl}: {signer!r} signs URLs valid for at most "
                f"{signer.max_url_ttl} seconds; lower url_ttl (FILE_URL_EXPIRES)"
            )
        self.signer = signer
        self._takes_signed_at = bool(signer.takes_signed_at)
        self._tag = signer_tag(signer.name)
        self.stats = Stats()
        if store is not None:
            if redis is not None:
                raise ConfigurationError("SignedURLs: pass redis=... or store=..., not both")
            if not isinstance(store, SharedStore):
                raise ConfigurationError(
                    f"SignedURLs(store=...): expected a SharedStore, got {type(store).__name__}"
                )
            if store.prefix != s.key_prefix:
                raise ConfigurationError(
                    f"SignedURLs(store=...): the store's prefix {store.prefix!r} differs from "
                    f"key_prefix={s.key_prefix!r}; give both the same prefix"
                )
            #: The redis-py client (``None`` for a store of another kind).
            self.redis: Any = getattr(store, "client", None)
            self._owns_client = False
            self._async_source: Any = async_redis
            self._embedded = False
        else:
            # What the async twin of the client is built from, on first async use.
            if async_redis is not None:
                self._async_source = async_redis
            elif redis is None:
                self._async_source = os.environ.get("REDIS_URL") or None
            else:
                self._async_source = redis if isinstance(redis, str) else None
            # A client we build from a URL (or the in-process one) is ours to close; a
            # passed one belongs to the caller.
            self._owns_client = redis is None or isinstance(redis, str)
            self.redis = make_client(redis, socket_timeout=s.socket_timeout)
            self._embedded = redis is None and self._async_source is None
            store = RedisStore(self.redis, s.key_prefix)
        self.store: SharedStore = store
        self._window = s.window
        self._min_validity = s.min_validity
        self._jitter = int(s.cache_ttl * s.ttl_jitter)
        #: The in-process layer (``None`` when ``local_cache_size`` is 0).
        self.local = LocalCache(s.local_cache_size) if s.local_cache_size else None
        self.channel = InvalidationChannel(
            store,
            self.local,
            retry_after=s.retry_after,
            socket_timeout=s.socket_timeout,
            tick=self.flush_stats,
            history=(
                HistoryRecorder(self.stats, points=s.history_points, interval=s.history_interval)
                if s.history_points
                else None
            ),
        )
        self._guard = FailOpen(
            store,
            retry_after=s.retry_after,
            stats=self.stats,
            sender=self,
            on_failure=self.channel.lost,
            on_use=self.channel.ensure_started,
        )
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._astore: AsyncSharedStore | None = None
        self._owns_async_client = isinstance(async_redis, str) or async_redis is None
        # Writes of plain obj.url reads in coroutines, sent by one task per loop iteration.
        self._scheduled: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._installation = Installation(
            key_prefix=s.key_prefix,
            read=self._url,
            invalidate=self.invalidate_keys,
            owner=self,
            prefetch=self._prefetch_loaded,
        )
        _instances.add(self)

    @classmethod
    def from_env(cls, signer: Signer | None = None, **overrides: Any) -> SignedURLs:
        """Build from the environment: ``REDIS_URL`` and the ``FILE_URL_*`` settings and,
        without a signer, the one the environment describes (``S3Signer.from_env()`` when
        ``S3_BUCKET`` is set, ``OSSSigner.from_env()`` when ``OSS_BUCKET`` is; see
        :func:`~sqla_signed_urls.signers.env.signer_from_env`)."""
        settings, redis_url = Settings.from_env(**overrides)
        if signer is None:
            from .signers.env import signer_from_env

            signer = signer_from_env()
        return cls(signer, settings=settings, redis=redis_url)

    def __repr__(self) -> str:
        return (
            f"SignedURLs(signer={self.signer!r}, key_prefix={self.settings.key_prefix!r}, "
            f"cache_ttl={self.settings.cache_ttl}, url_ttl={self.settings.url_ttl})"
        )

    # -- installing -------------------------------------------------------------------------

    def install(
        self, target: type[Any] | registry, *, prefetch: bool | PrefetchURLs = False
    ) -> None:
        """Give every ``ObjectKey`` column of ``target`` its URL attribute and watch commits.

        ``target`` is a declarative base, a ``registry`` or one mapped class; classes mapped
        later are covered too. Installing one target twice raises ``ConfigurationError``.

        ``prefetch=True`` applies :meth:`prefetch` to every ORM ``SELECT`` of every session
        (or pass the option to apply, ``prefetch=urls.prefetch("url", "thumb_url")``);
        ``execution_options(prefetch_urls=False)`` turns it off for one statement.
        """
        if prefetch is not False and not isinstance(prefetch, (bool, PrefetchURLs)):
            raise ConfigurationError(
                f"install(prefetch={prefetch!r}): expected True, False or urls.prefetch(...)"
            )
        if isinstance(prefetch, PrefetchURLs) and prefetch.owner is not self:
            raise ConfigurationError(
                "install(prefetch=...): the option was made by another SignedURLs"
            )
        self._installation.add(target)
        if prefetch is True:
            self._installation.prefetch_all = self.prefetch()
        elif isinstance(prefetch, PrefetchURLs):
            self._installation.prefetch_all = prefetch

    def prefetch(self, *attrs: str, batch_size: int = PREFETCH_BATCH_SIZE) -> PrefetchURLs:
        """A loader option: right after the statement runs, the URLs of every instance of an
        installed class it loaded (its entities and what ``selectinload``, ``joinedload`` and
        ``subqueryload`` chains loaded) are read in ONE round trip (``MGET``, and at most one
        pipelined write for what had to be signed), so every ``.url`` on the page is then an
        in-process hit::

            stmt = select(Post).options(
                selectinload(Post.author).selectinload(User.avatar),
                selectinload(Post.images),
                urls.prefetch(),              # or urls.prefetch("url", "thumb_url")
            )
            posts = session.scalars(stmt).all()

        ``attrs`` names the URL attributes to read (default ``"url"``). A statement loading
        more than ``batch_size`` instances reads them in batches of that size; a streamed
        result (``yield_per``, ``session.stream``) reads each partition as it arrives. Lazy
        loads made later are not prefetched. Works the same with ``AsyncSession`` (the read
        is awaited on the ``redis.asyncio`` client). A failing read never fails the query:
        the attributes then read their URLs one by one, as without the option.
        """
        names = attrs or ("url",)
        for name in names:
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigurationError(
                    f"prefetch({name!r}): expected the name of a signed-URL attribute such as 'url'"
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(
                f"prefetch(batch_size={batch_size!r}): expected a positive int (default "
                f"{PREFETCH_BATCH_SIZE})"
            )
        return PrefetchURLs(self, names, batch_size)

    def uninstall(self, target: type[Any] | registry | None = None) -> None:
        """Undo :meth:`install` for ``target`` (every target when ``None``)."""
        self._installation.remove(target)

    def _spec(self, cls: type, attr: str, variant: str | None = None) -> URLSpec:
        specs = self._installation.specs.get(cls, {})
        spec = specs.get(attr)
        if spec is None:
            raise ConfigurationError(
                f"{cls.__name__}.{attr} is not a signed-URL attribute: give the class an "
                "ObjectKey column and cover it with SignedURLs.install()"
            )
        if variant is None:
            return spec
        for other in specs.values():
            if other.variant == variant and other.column == spec.column:
                return other
        names = sorted(o.variant for o in specs.values() if o.variant and o.column == spec.column)
        raise ConfigurationError(
            f"{cls.__name__}.{attr} has no variant {variant!r}"
            + (
                f" (its variants: {', '.join(names)})"
                if names
                else "; declare it with ObjectKey(variants={...})"
            )
        )

    def url_spec(self, cls: type, attr: str = "url") -> URLSpec:
        """What ``install()`` recorded for ``cls.<attr>`` (column, key prefix, primary key);
        ``ConfigurationError`` when that is not a signed-URL attribute."""
        return self._spec(cls, attr)

    def installed_specs(self) -> list[URLSpec]:
        """One :class:`URLSpec` per installed class and signed-URL attribute."""
        return [spec for by_attr in self._installation.specs.values() for spec in by_attr.values()]

    def cache_key(self, obj: Any, attr: str = "url") -> str | None:
        """The Redis key ``obj``'s URL is cached under (``None`` without a primary key)."""
        return self._spec(type(obj), attr).key_for(obj)

    # -- reading ----------------------------------------------------------------------------

    def url_for(self, obj: Any, attr: str = "url", *, variant: str | None = None) -> str | None:
        """What ``obj.<attr>`` returns: a signed URL, or ``None`` for an empty object key.
        ``variant`` names one of the column's :class:`~sqla_signed_urls.Variant` URLs."""
        return self._url(obj, self._spec(type(obj), attr, variant))

    def _url(self, obj: Any, spec: URLSpec) -> str | None:
        try:
            object_key = obj.__dict__[spec.column]
        except KeyError:
            object_key = getattr(obj, spec.column)
        if not object_key:
            return None
        if spec.shape is not None:  # a variant, a download name: part of what is matched
            object_key = spec.match_key(obj, object_key)
            if object_key is None:
                return self._shape_failed(spec, obj)
        pk = obj.__dict__.get(spec.pk_attrs[0]) if len(spec.pk_attrs) == 1 else None
        key = spec.prefix + str(pk) + spec.suffix if type(pk) is int else spec.key_for(obj)
        if key is None:  # not flushed yet: nothing to cache it under
            return self._sign_uncached(spec, obj, object_key)
        local = self.local
        if local is not None and self.channel.live:
            entry = local.get(key)
            if entry is not None and entry[0] == object_key and entry[2] > _time():
                self._count_hit(spec, key)
                return entry[1]
        return self._lookup(spec, key, object_key)

    def _lookup(self, spec: URLSpec, key: str, object_key: str) -> str | None:
        if _running_loop() is not None:  # never block an event loop on Redis
            if _in_greenlet():  # awaitable_attrs, AsyncSession internals: await it there
                url: str | None = _await_only(self._alookup(spec, key, object_key))
                return url
            return self._sign_in_loop(spec, key, object_key)
        raws = self._guard.get_many([key])
        if raws is not None:
            entry = match_entry(raws[0], self._tag, object_key, _time(), self._min_validity)
            if entry is not None and self.signer.url_is_for(entry[1], bare_key(object_key)):
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
            cached = raws is not None
            flight.url = self._sign(spec, [(key, object_key)], writes, cached)[key]
            if cached:
                self._write(writes)
        finally:
            flight.done.set()
            with self._flights_lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
        return flight.url

    async def aurl_for(
        self, obj: Any, attr: str = "url", *, variant: str | None = None
    ) -> str | None:
        """:meth:`url_for` for async code: L1, then one awaited ``GET``, then sign and write.
        ``await obj.awaitable_attrs.url`` (SQLAlchemy's ``AsyncAttrs``) does the same."""
        return await self._aurl(obj, self._spec(type(obj), attr, variant))

    async def _aurl(self, obj: Any, spec: URLSpec) -> str | None:
        object_key = getattr(obj, spec.column)
        if not object_key:
            return None
        if spec.shape is not None:
            object_key = spec.match_key(obj, object_key)
            if object_key is None:
                return self._shape_failed(spec, obj)
        key = spec.key_for(obj)
        if key is None:  # not flushed yet: nothing to cache it under
            return self._sign_uncached(spec, obj, object_key)
        local = self.local
        if local is not None and self.channel.live:
            entry = local.get(key)
            if entry is not None and entry[0] == object_key and entry[2] > _time():
                self._count_hit(spec, key)
                return entry[1]
        return await self._alookup(spec, key, object_key)

    async def _alookup(self, spec: URLSpec, key: str, object_key: str) -> str | None:
        astore = self.async_store
        raws = await self._guard.acall(astore.get_many, [key])
        if raws is not None:
            entry = match_entry(raws[0], self._tag, object_key, _time(), self._min_validity)
            if entry is not None and self.signer.url_is_for(entry[1], bare_key(object_key)):
                self._remember([(key, entry)])
                self._count_hit(spec, key)
                return entry[1]
        self._count_misses(spec, [key])
        writes: list[_Write] = []
        url = self._sign(spec, [(key, object_key)], writes, raws is not None)[key]
        if raws is not None:
            await self._awrite(writes)
        return url

    def _sign_in_loop(self, spec: URLSpec, key: str, object_key: str) -> str | None:
        """A plain ``obj.url`` in a coroutine: no network I/O. The URL is signed directly (its
        windowed expiry makes it the one other processes serve for stable signers) and its
        write queued for one task that sends what a loop iteration queued in one pipeline
        (one connection, not one per row), never awaited here. Past ``MAX_SCHEDULED_WRITES``
        waiting writes, or with no async client, the write is dropped and counted."""
        self._count_misses(spec, [key])
        loop = _running_loop()
        can_write = (
            loop is not None
            and self._async_available()
            and len(self._scheduled) < MAX_SCHEDULED_WRITES
            and not self._guard.skipping
        )
        writes: list[_Write] = []
        url = self._sign(spec, [(key, object_key)], writes, can_write)[key]
        if writes and can_write and loop is not None:
            self._scheduled.extend(writes)
            if self._flusher is None or self._flusher.done():
                self._flusher = loop.create_task(self._send_scheduled())
        elif writes:
            self.stats.writes_dropped += len(writes)
        return url

    async def _send_scheduled(self) -> None:
        await asyncio.sleep(0)  # the rest of this loop iteration's reads queue theirs too
        while self._scheduled:
            writes, self._scheduled = self._scheduled, []
            await self._awrite(writes)

    def resolve(
        self, objects: Iterable[Any], attr: str = "url", *, variant: str | None = None
    ) -> list[str | None]:
        """URLs for many objects in input order: in-process layer first, then ONE ``MGET``
        for the rest, then at most one pipelined write for what had to be signed.

        Objects of different mapped classes may be mixed; ``variant`` reads one of the
        column's :class:`~sqla_signed_urls.Variant` URLs instead::

            for post, url in zip(posts, urls.resolve(posts)): ...
            thumbs = urls.resolve(images, variant="thumb")
        """
        objects = objects if isinstance(objects, list) else list(objects)
        results: list[str | None] = [None] * len(objects)
        page = self._resolve_local(objects, attr, results, variant=variant)
        if page is not None:
            raws = self._guard.get_many(page.keys)
            writes = self._serve(page, raws, results)
            if writes:
                self._write(writes)
            for i, spec in page.disagreeing(results):
                results[i] = self._url(objects[i], spec)
        return results

    async def aresolve(
        self, objects: Iterable[Any], attr: str = "url", *, variant: str | None = None
    ) -> list[str | None]:
        """:meth:`resolve` for async code: the same rules and results, with the Redis read (ONE
        ``MGET``) and the write (at most one pipeline) awaited on a ``redis.asyncio`` client::

            files = (await session.scalars(select(File).limit(50))).all()
            for file, url in zip(files, await urls.aresolve(files)): ...
        """
        objects = objects if isinstance(objects, list) else list(objects)
        results: list[str | None] = [None] * len(objects)
        page = self._resolve_local(objects, attr, results, variant=variant)
        if page is not None:
            astore = self.async_store
            raws = await self._guard.acall(astore.get_many, page.keys)
            writes = self._serve(page, raws, results)
            if writes:
                await self._awrite(writes)
            for i, spec in page.disagreeing(results):
                results[i] = await self._aurl(objects[i], spec)
        return results

    def _resolve_local(
        self,
        objects: list[Any],
        attr: str,
        results: list[str | None],
        count: bool = True,
        variant: str | None = None,
    ) -> _Page | None:
        """Answer what the in-process layer (or an empty key) can; return the rest."""
        # What the in-process layer did not answer, as parallel lists in input order: the
        # Redis key, object key, result index and spec of each row (cheaper than a tuple each).
        keys: list[str] = []
        object_keys: list[str] = []
        indexes: list[int] = []
        specs: list[URLSpec] = []
        local = self.local
        # An empty L1 (a new process, just cleared) is not asked row by row.
        local_get = local.get if local and self.channel.live else None
        hits = self._hit_keys()
        hit_count = 0
        now = _time()
        cls: type | None = None
        shaped = False
        for i, obj in enumerate(objects):
            if type(obj) is not cls:  # once per run of one class, not once per row
                cls = type(obj)
                spec = self._spec(cls, attr, variant)
                column, key_for, prefix = spec.column, spec.key_for, spec.prefix
                suffix, shape = spec.suffix, spec.shape
                shaped = shaped or shape is not None
                pk_name = spec.pk_attrs[0] if len(spec.pk_attrs) == 1 else None
            d = obj.__dict__
            object_key = d.get(column, _MISSING)
            if object_key is _MISSING:
                object_key = getattr(obj, column)
            if not object_key:
                continue
            if shape is not None:
                object_key = spec.match_key(obj, object_key)
                if object_key is None:
                    results[i] = self._shape_failed(spec, obj)
                    continue
            pk = d.get(pk_name) if pk_name is not None else None
            key = prefix + str(pk) + suffix if type(pk) is int else key_for(obj)
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
        if count:
            self._count_hits(hit_count, hits)
        return _Page(keys, object_keys, indexes, specs, shaped) if keys else None

    # -- prefetching (the query option) -----------------------------------------------------

    def _prefetch_loaded(self, objects: list[Any], option: PrefetchURLs) -> None:
        """What :meth:`prefetch` does once a statement has loaded ``objects``: read their
        URLs into the in-process layer, ``option.batch_size`` objects per round trip. In a
        coroutine's greenlet (``AsyncSession``) the round trips are awaited; a sync session
        used on a running loop is left to the attributes (no blocking I/O on a loop)."""
        if self.local is None:
            return  # nothing would keep what a prefetch reads
        try:
            in_loop = _running_loop() is not None
            if in_loop and not _in_greenlet():
                return
            step = option.batch_size
            for start in range(0, len(objects), step):
                batch = objects[start : start + step]
                if in_loop:
                    _await_only(self._aprefetch(batch, option.attrs))
                else:
                    self._prefetch(batch, option.attrs)
        except Exception as exc:  # never fail the query: the attributes read on their own
            log.warning(
                "Could not prefetch signed URLs (%s); reading them one by one",
                type(exc).__name__,
            )

    def _prefetch_page(
        self, objects: list[Any], attrs: tuple[str, ...]
    ) -> tuple[_Page | None, list[str | None]]:
        """One page for every ``(object, attr)`` the in-process layer does not hold."""
        specs = self._installation.specs
        results: list[str | None] = []
        keys: list[str] = []
        object_keys: list[str] = []
        indexes: list[int] = []
        page_specs: list[URLSpec] = []
        shaped = False
        for attr in attrs:
            objs = [obj for obj in objects if attr in specs.get(type(obj), ())]
            if not objs:
                continue
            part: list[str | None] = [None] * len(objs)
            page = self._resolve_local(objs, attr, part, count=False)
            if page is not None:
                offset = len(results)
                keys += page.keys
                object_keys += page.object_keys
                indexes += [i + offset for i in page.indexes]
                page_specs += page.specs
                shaped = shaped or page.shaped
            results += part
        page = _Page(keys, object_keys, indexes, page_specs, shaped) if keys else None
        return page, results

    def _prefetch(self, objects: list[Any], attrs: tuple[str, ...]) -> None:
        page, results = self._prefetch_page(objects, attrs)
        if page is not None:
            writes = self._serve(page, self._guard.get_many(page.keys), results)
            if writes:
                self._write(writes)

    async def _aprefetch(self, objects: list[Any], attrs: tuple[str, ...]) -> None:
        page, results = self._prefetch_page(objects, attrs)
        if page is not None:
            raws = await self._guard.acall(self.async_store.get_many, page.keys)
            writes = self._serve(page, raws, results)
            if writes:
                await self._awrite(writes)

    def _serve(
        self, page: _Page, raws: Sequence[bytes | str | None] | None, results: list[str | None]
    ) -> list[_Write]:
        """Serve what ``raws`` (the shared values of ``page.keys``, ``None`` when the store was
        skipped or failed) holds for the rows now, sign the rest, and return the writes to
        make (none when the read failed: the store is not asked again now)."""
        keys, object_keys, indexes, specs = page.keys, page.object_keys, page.indexes, page.specs
        hits = self._hit_keys()
        fresh: list[tuple[str, Servable]] = []
        missed: list[int] = []  # positions to sign
        if raws:
            entries = match_entries(raws, self._tag, object_keys, _time(), self._min_validity)
            # Prefixes for the whole page at once: a batch is cheaper than a key at a time.
            prefixes = self.signer.url_prefixes(
                [bare_key(k) for k in object_keys] if page.shaped else object_keys
            )
            rows = zip(keys, entries, prefixes, strict=True)
            for pos, (key, entry, prefix) in enumerate(rows):
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
            return []
        to_sign: dict[URLSpec, list[tuple[str, str]]] = {}
        position: dict[str, int] = {}
        for pos in missed:
            to_sign.setdefault(specs[pos], []).append((keys[pos], object_keys[pos]))
            position[keys[pos]] = pos
        writes: list[_Write] = []
        for spec, items in to_sign.items():
            self._count_misses(spec, [key for key, _ in items])
            for key, signed in self._sign(spec, items, writes, raws is not None).items():
                results[indexes[position[key]]] = signed
        return writes if raws is not None else []

    def _remember(self, items: list[tuple[str, Servable]]) -> None:
        if self.local is not None and self.channel.live and items:
            self.local.set_many(items)

    # -- signing ----------------------------------------------------------------------------

    def expires_at(self, now: float | None = None) -> int:
        """The expiry a URL signed now gets: ``now + url_ttl`` rounded down to the window."""
        now_i = int(_time() if now is None else now)
        return (now_i + self.settings.url_ttl) // self._window * self._window

    def _signed_at(self, now_i: int, expires_at: int) -> int | None:
        """The signing time for a signer that takes one (``None`` for the others): the start
        of the window ``now_i`` falls in, never more than ``max_url_ttl`` before the expiry,
        so one window's URLs are the same in every process."""
        if not self._takes_signed_at:
            return None
        signed_at = now_i // self._window * self._window
        limit = self.signer.max_url_ttl
        if limit is not None and expires_at - signed_at > limit:
            signed_at = expires_at - limit
        return signed_at

    def _sign_uncached(self, spec: URLSpec, obj: Any, object_key: str) -> str | None:
        now_i = int(_time())
        expires_at = self.expires_at(now_i)
        try:
            return self._sign_one(object_key, expires_at, self._signed_at(now_i, expires_at))
        except Exception as exc:
            self._sign_failed(spec, None, obj, exc)
            return None

    def _sign_one(self, object_key: str, expires_at: int, signed_at: int | None) -> str:
        """Sign one match key: a plain object key through ``sign()``; one with extra
        parameters (a variant's, a download name's) through ``sign_with()``."""
        sign: Any = self.signer.sign  # signed_at only for signers that take it
        if EXTRAS not in object_key:
            if signed_at is None:
                return str(sign(object_key, expires_at=expires_at))
            return str(sign(object_key, expires_at=expires_at, signed_at=signed_at))
        bare, pairs = split_match_key(object_key)
        headers = dict(pairs)
        params = [(k, v) for k, v in pairs if k not in _RESPONSE_HEADERS]
        return str(
            self.signer.sign_with(
                bare,
                expires_at=expires_at,
                signed_at=signed_at,
                response_content_disposition=headers.get("response-content-disposition"),
                response_content_type=headers.get("response-content-type"),
                params=params,
            )
        )

    def _shape_failed(self, spec: URLSpec, obj: Any) -> str | None:
        """A variant's ``key`` or a download-name callable raised or gave no usable key:
        counted and logged as a signing failure; the URL is ``None``."""
        self._sign_failed(
            spec,
            spec.key_for(obj),
            obj,
            SigningError(f"{spec.cls.__name__}.{spec.attr}: its variant key or name failed"),
        )
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
        signed_at = self._signed_at(now_i, expires_at)
        sign_one = self._sign_one
        base_ttl = expires_at - self._min_validity - now_i
        out: dict[str, str | None] = {}
        done: list[str] = []
        fresh: list[tuple[str, Servable]] = []
        info = log.isEnabledFor(logging.INFO)
        for key, object_key in items:
            if info:
                log.info("Generating new signed URL for file %s (%s)", _ident(key, spec), reason)
            try:
                url = sign_one(object_key, expires_at, signed_at)
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

    def _write(self, writes: list[_Write]) -> None:
        if not writes:
            return
        items = [(key, value, ttl, until) for key, value, ttl, until, _ in writes]
        if self._guard.set_many(items):
            _log_writes(writes)

    async def _awrite(self, writes: list[_Write]) -> None:
        if not writes:
            return
        items = [(key, value, ttl, until) for key, value, ttl, until, _ in writes]
        if await self._guard.aset_many(self.async_store, items):
            _log_writes(writes)

    def _async_available(self) -> bool:
        return self._astore is not None or self._async_source is not None or self._embedded

    @property
    def async_store(self) -> AsyncSharedStore:
        """The ``redis.asyncio`` twin of :attr:`store`, built on first async use (from
        ``async_redis=``, the Redis URL, or the in-process Redis); ``ConfigurationError`` when
        ``redis=`` was a ready sync client and no ``async_redis=`` was given."""
        astore = self._astore
        if astore is None:
            from .cache.aredis import AsyncRedisStore, async_client_from_url

            source = self._async_source
            if isinstance(source, str):
                client = async_client_from_url(
                    source, socket_timeout=self.settings.socket_timeout, setting="async_redis"
                )
            elif source is not None:
                client = source
            elif self._embedded:
                import fakeredis

                server = self.redis.connection_pool.connection_kwargs["server"]
                client = fakeredis.FakeAsyncRedis(server=server)
            else:
                raise ConfigurationError(
                    "SignedURLs(async_redis=...): async reads need a redis.asyncio client or a "
                    "redis:// URL; the redis=... given is a ready sync client, which has no "
                    "async twin"
                )
            astore = self._astore = AsyncRedisStore(client, self.settings.key_prefix)
        return astore

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
        self.clear_local(keys)
        self.stats.invalidations += len(keys)
        if _running_loop() is not None and _in_greenlet() and self._async_available():
            # AsyncSession's commit: await the async client there, never block the loop
            delete = self._guard.adelete_and_publish(self.async_store, keys)
            removed: int | None = _await_only(delete)
        else:
            removed = self._guard.delete_and_publish(keys)
        if removed is None:
            self.channel.defer(keys)
        for cls, ks in keys_by_class.items():
            ks = sorted(set(ks))
            if ks and signals.url_invalidated.receivers:
                signals.url_invalidated.send(cls, keys=ks)
        return removed or 0

    def clear_local(self, keys: Iterable[str] | None = None) -> None:
        """Drop ``keys`` (every entry when ``None``) from this process's in-process layer."""
        if self.local is None:
            return
        if keys is None:
            self.local.clear()
        else:
            self.local.discard(keys)

    # -- health, counters, lifecycle --------------------------------------------------------

    @property
    def redis_available(self) -> bool:
        """False while the circuit breaker skips Redis."""
        return not self._guard.outage

    def flush_stats(self) -> None:
        """Add this process's counters to the fleet-wide totals in Redis now."""
        self.stats.flush(self.store)

    def fleet_counters(self) -> dict[str, int]:
        """Fleet-wide totals for this key prefix, this process's unflushed counts included."""
        return self.stats.fleet(self.store)

    def close(self) -> None:
        """Stop the background thread (flushing counters first), drop the L1, and close the
        Redis client when ``SignedURLs`` built it (a passed client is left to its owner)."""
        self.channel.stop()
        if self._owns_client:
            try:
                self.redis.close()
            except Exception:  # closing must not fail the app's shutdown
                log.debug("could not close the Redis client")

    async def aclose(self) -> None:
        """:meth:`close` for async apps: also closes the ``redis.asyncio`` client when
        ``SignedURLs`` built it (call it on the loop that used it, e.g. in a lifespan)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            await flusher
        astore, self._astore = self._astore, None
        client = getattr(astore, "client", None)
        if client is not None and self._owns_async_client:
            try:
                await client.aclose()
            except Exception:  # closing must not fail the app's shutdown
                log.debug("could not close the async Redis client")
        # close() joins the listener thread: off the loop, which must not wait on it
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def _forked(self) -> None:
        self._astore = None  # its connections belong to the parent's event loop
        self._scheduled = []
        self._flusher = None
        self.channel.forked()
        self.stats.forked()
        self._flights_lock = threading.Lock()
        self._flights = {}


def _log_writes(writes: list[_Write]) -> None:
    if log.isEnabledFor(logging.INFO):
        for _, _, ttl, _, ident in writes:
            log.info("Cached URL for file %s for %d seconds", ident, ttl)


def _ident(key: str | None, spec: URLSpec | None) -> str:
    """The row id part of a cache key, for log lines."""
    if spec is not None:
        return spec.ident(key)
    return "?" if key is None else key
