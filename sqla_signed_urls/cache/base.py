"""What the cache layers store, and the interface of the shared (L2) store.

A cached value is readable text, never a pickle::

    1764205200 1764193500 9f2c4e1a https://campus-forum.oss-cn-hangzhou.aliyuncs.com/... p/1.jpg

that is: URL expiry and end of the cache lifetime (Unix seconds, ten digits), a tag of the
signer (bucket), the URL verbatim, and the object key it was signed for. A value is served only
when the tag and the object key match the row, so a stale value can never hand out the wrong
file.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

__all__ = [
    "AsyncSharedStore",
    "AsyncSubscription",
    "Entry",
    "Servable",
    "SharedStore",
    "StoredValue",
    "Subscription",
    "Write",
    "decode_entry",
    "encode_entry",
    "match_entries",
    "match_entry",
    "signer_tag",
]

#: Values larger than this are never ours; they are treated as misses without parsing.
MAX_VALUE_BYTES = 16 * 1024


#: One cached URL: ``(url, expires_at, cache_until)``.
Entry = tuple[str, int, int]
#: What a read may serve: ``(object_key, url, servable_until)``. A plain tuple: built on
#: every read, and stored as it is in the in-process layer.
Servable = tuple[str, str, int]


def signer_tag(signer_name: str) -> str:
    """Eight hex characters naming the signer (bucket, endpoint) inside stored values."""
    return hashlib.blake2b(signer_name.encode(), digest_size=4).hexdigest()


def encode_entry(entry: Entry, tag: str, object_key: str) -> bytes:
    url, expires_at, cache_until = entry
    return b"%010d %010d %b %b %b" % (
        expires_at,
        cache_until,
        tag.encode(),
        url.encode(),
        object_key.encode("utf-8", "surrogatepass"),
    )


# Field offsets: the two times are ten digits (zero-padded), the tag eight characters, so the
# read path checks a value with slices and ``startswith`` instead of splitting it.
_TAG_AT = 21  # " <tag> " between the cache lifetime and the URL
_URL_AT = 31


def match_entry(
    raw: bytes | str | None, tag: str, object_key: str, now: float, min_validity: int
) -> Servable | None:
    """``(object_key, url, servable_until)`` if ``raw`` is ours, for ``object_key`` and
    servable now, else ``None``. ``servable_until`` is the end of the cache lifetime or the
    last second the URL still has ``min_validity`` left, whichever comes first (a value written
    under other settings may end its cache lifetime later); the in-process layer stores exactly
    this tuple.

    Anything malformed is a miss, never an exception. This runs once per row of every page
    whose URLs come from Redis, so it avoids splitting and re-encoding.
    """
    return match_entries((raw,), tag, (object_key,), now, min_validity)[0]


def match_entries(
    raws: Sequence[bytes | str | None],
    tag: str,
    object_keys: Sequence[str],
    now: float,
    min_validity: int,
) -> list[Servable | None]:
    """:func:`match_entry` of each value of a page, in one loop (no call per row): what a
    ``resolve()`` of an in-process-cold page spends most of its own time on."""
    # strict decoding: signers reject keys with lone surrogates, so no value of ours has one
    out: list[Servable | None] = []
    append = out.append
    marker = f" {tag} "
    for raw, object_key in zip(raws, object_keys, strict=True):
        if raw is None or len(raw) > MAX_VALUE_BYTES:
            append(None)
            continue
        try:
            data = raw.decode() if type(raw) is bytes else str(raw)
        except UnicodeError:
            append(None)
            continue
        end = len(data) - len(object_key) - 1
        if (
            end <= _URL_AT
            or data[10] != " "
            or data[end] != " "
            or not data.startswith(marker, _TAG_AT)
            or not data.endswith(object_key)
        ):
            append(None)
            continue
        try:
            until = int(data[11:21])
            valid_until = int(data[:10]) - min_validity
        except ValueError:
            append(None)
            continue
        if valid_until < until:
            until = valid_until
        append((object_key, data[_URL_AT:end], until) if until > now else None)
    return out


class StoredValue(NamedTuple):
    """Every field of a stored value, for maintenance (``CacheService``); reads use
    :func:`match_entry`, which checks without building this."""

    url: str
    expires_at: int
    cache_until: int
    tag: str
    object_key: str


def decode_entry(raw: bytes | str | None) -> StoredValue | None:
    """Split a stored value into its fields; anything malformed is ``None``."""
    if raw is None:
        return None
    try:
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        if len(data) > MAX_VALUE_BYTES:
            return None
        expires, until, tag, url, object_key = data.split(b" ", 4)
        if not url or not object_key:
            return None
        return StoredValue(
            url.decode(),
            int(expires),
            int(until),
            tag.decode("ascii"),
            object_key.decode("utf-8", "surrogatepass"),
        )
    except (ValueError, UnicodeError):
        return None


#: A cache write: key, encoded value, TTL in seconds, end of the cache lifetime (Unix seconds).
Write = tuple[str, bytes, int, int]


class Subscription(abc.ABC):
    """A live subscription to the invalidation channel (see :meth:`SharedStore.subscribe`)."""

    @abc.abstractmethod
    def next_event(self, timeout: float) -> tuple[str, str] | None:
        """Wait up to ``timeout`` seconds for the next event: ``("subscribed", "")`` when the
        server confirms the subscription (again after a silent reconnect), ``("message",
        text)`` for a published message, ``None`` when nothing came."""

    @abc.abstractmethod
    def close(self) -> None:
        """Unsubscribe and release the connection."""


class SharedStore(abc.ABC):
    """The shared cache behind the in-process layer: everything the read path and
    :class:`~sqla_signed_urls.CacheService` ask of it, so neither knows the key layout.

    Every method may raise; errors of the kinds in :attr:`errors` mean the store is
    unreachable or answered wrongly. :class:`~sqla_signed_urls.SignedURLs` turns any failure
    into direct signing and opens its circuit breaker; ``CacheService`` raises
    :class:`~sqla_signed_urls.CacheError`. Check an implementation of your own with
    :class:`sqla_signed_urls.testing.SharedStoreContract`::

        class MyStore(SharedStore): ...
        urls = SignedURLs(signer, store=MyStore(...))
    """

    #: Where keys live: every URL key starts with it; bookkeeping is kept apart from them.
    prefix: str
    #: Exception types that mean "the store failed" (``CacheService`` translates them).
    errors: tuple[type[BaseException], ...] = (OSError,)

    @abc.abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]:
        """Values for ``keys`` in order, in one round trip (``None`` for a missing key)."""

    @abc.abstractmethod
    def set_many(self, items: Sequence[Write]) -> None:
        """Store ``(key, value, ttl, cache_until)`` items and index them by ``cache_until``,
        in one round trip."""

    @abc.abstractmethod
    def delete_many(self, keys: Sequence[str]) -> int:
        """Remove keys and their index entries; return how many keys existed."""

    @abc.abstractmethod
    def clear(self) -> int:
        """Remove every URL key under the prefix and the expiry index, in batches (other data
        in the same database survives); return how many URL keys were removed."""

    @abc.abstractmethod
    def scan_keys(self, count: int = 1000) -> Iterable[list[str]]:
        """Batches of the URL keys under the prefix (bookkeeping keys excluded)."""

    @abc.abstractmethod
    def live_count(self, now: int) -> int:
        """How many indexed entries are still cached at ``now`` (one cheap command)."""

    @abc.abstractmethod
    def expiring(self, now: int, until: int, batch: int) -> Iterator[list[str]]:
        """Keys whose cache lifetime ends in ``(now, until]``, each once, in batches of
        about ``batch``; index entries that ended by ``now`` are dropped first."""

    @abc.abstractmethod
    def renew(self, items: Sequence[Write], gone: Sequence[str]) -> int:
        """Overwrite only the keys that still exist (never bring a deleted key back), update
        their index entries, and drop the index entries of ``gone`` keys; return how many
        keys were renewed."""

    @abc.abstractmethod
    def add_counters(self, deltas: Mapping[str, int]) -> None:
        """Add ``deltas`` to the fleet-wide counters."""

    @abc.abstractmethod
    def read_counters(self) -> dict[str, int]:
        """The fleet-wide counters."""

    @abc.abstractmethod
    def memory_used(self) -> int | None:
        """Bytes the store uses, or ``None`` when it cannot tell."""

    @abc.abstractmethod
    def publish(self, message: str) -> None:
        """Tell every process subscribed to this store's invalidation channel."""

    @abc.abstractmethod
    def subscribe(self) -> Subscription:
        """Subscribe to the invalidation channel (the first event confirms it)."""

    def describe(self) -> dict[str, object]:
        """Where the store is, for statistics (for Redis: the database index)."""
        return {}

    # -- fleet history (optional: a store without it keeps no history) ----------------------

    #: Whether the store keeps the fleet history. The defaults of the four methods below
    #: keep none: no process is ever elected to record it, and reading it finds nothing.
    keeps_history: bool = False

    def live_counts(self, now: int, ahead: Sequence[int]) -> list[int]:
        """:meth:`live_count` at ``now + a`` for each ``a`` of ``ahead`` (how many entries
        have more than ``a`` seconds left), in one round trip where the store can."""
        return [self.live_count(now + a) for a in ahead]

    def try_lock(self, name: str, token: str, ttl: int) -> bool:
        """Take the lock ``name`` for ``ttl`` seconds unless it is held; ``True`` when this
        call took it. A lock ends by itself, so a holder that dies never blocks the fleet."""
        return False

    def append_history(self, at: int, point: str, keep: int) -> None:
        """Add ``point`` (text) at ``at`` (Unix seconds) to the history, keeping the newest
        ``keep`` points. The history survives :meth:`clear`."""
        return None

    def read_history(
        self, since: int | None = None, limit: int | None = None
    ) -> list[tuple[int, str]]:
        """``(at, point)`` of the history, oldest first: those at or after ``since``, at most
        the newest ``limit`` of them."""
        return []


class AsyncSubscription(abc.ABC):
    """The asyncio twin of :class:`Subscription` (see :meth:`AsyncSharedStore.subscribe`)."""

    @abc.abstractmethod
    async def next_event(self, timeout: float) -> tuple[str, str] | None:
        """As :meth:`Subscription.next_event`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """As :meth:`Subscription.close`."""


class AsyncSharedStore(abc.ABC):
    """The asyncio twin of :class:`SharedStore`: the same methods and promises, every one that
    talks to the store a coroutine, :meth:`scan_keys` and :meth:`expiring` async iterators.
    Check an implementation of your own with
    :class:`sqla_signed_urls.testing.AsyncSharedStoreContract`.
    """

    #: As :attr:`SharedStore.prefix`.
    prefix: str
    #: As :attr:`SharedStore.errors`.
    errors: tuple[type[BaseException], ...] = (OSError,)

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]:
        """As :meth:`SharedStore.get_many`."""

    @abc.abstractmethod
    async def set_many(self, items: Sequence[Write]) -> None:
        """As :meth:`SharedStore.set_many`."""

    @abc.abstractmethod
    async def delete_many(self, keys: Sequence[str]) -> int:
        """As :meth:`SharedStore.delete_many`."""

    @abc.abstractmethod
    async def clear(self) -> int:
        """As :meth:`SharedStore.clear`."""

    @abc.abstractmethod
    def scan_keys(self, count: int = 1000) -> AsyncIterator[list[str]]:
        """As :meth:`SharedStore.scan_keys`, an async iterator (``async def`` with ``yield``)."""

    @abc.abstractmethod
    async def live_count(self, now: int) -> int:
        """As :meth:`SharedStore.live_count`."""

    @abc.abstractmethod
    def expiring(self, now: int, until: int, batch: int) -> AsyncIterator[list[str]]:
        """As :meth:`SharedStore.expiring`, an async iterator (``async def`` with ``yield``)."""

    @abc.abstractmethod
    async def renew(self, items: Sequence[Write], gone: Sequence[str]) -> int:
        """As :meth:`SharedStore.renew`."""

    @abc.abstractmethod
    async def add_counters(self, deltas: Mapping[str, int]) -> None:
        """As :meth:`SharedStore.add_counters`."""

    @abc.abstractmethod
    async def read_counters(self) -> dict[str, int]:
        """As :meth:`SharedStore.read_counters`."""

    @abc.abstractmethod
    async def memory_used(self) -> int | None:
        """As :meth:`SharedStore.memory_used`."""

    @abc.abstractmethod
    async def publish(self, message: str) -> None:
        """As :meth:`SharedStore.publish`."""

    @abc.abstractmethod
    async def subscribe(self) -> AsyncSubscription:
        """As :meth:`SharedStore.subscribe`."""

    def describe(self) -> dict[str, object]:
        """As :meth:`SharedStore.describe`."""
        return {}

    #: As :attr:`SharedStore.keeps_history`.
    keeps_history: bool = False

    async def live_counts(self, now: int, ahead: Sequence[int]) -> list[int]:
        """As :meth:`SharedStore.live_counts`."""
        return [await self.live_count(now + a) for a in ahead]

    async def try_lock(self, name: str, token: str, ttl: int) -> bool:
        """As :meth:`SharedStore.try_lock`."""
        return False

    async def append_history(self, at: int, point: str, keep: int) -> None:
        """As :meth:`SharedStore.append_history`."""
        return None

    async def read_history(
        self, since: int | None = None, limit: int | None = None
    ) -> list[tuple[int, str]]:
        """As :meth:`SharedStore.read_history`."""
        return []
