"""What the cache layers store, and the interface of the shared (L2) store.

A cached value is readable text, never a pickle::

    1764205200 1764193500 9f2c4e1a https://campus-forum.oss-cn-hangzhou.aliyuncs.com/... p/1.jpg

that is: URL expiry and end of the cache lifetime (Unix seconds), a tag of the signer (bucket),
the URL verbatim, and the object key it was signed for. A value is served only when the tag and
the object key match the row, so a stale value can never hand out the wrong file.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "Entry",
    "SharedStore",
    "StoredValue",
    "decode_entry",
    "encode_entry",
    "match_entry",
    "signer_tag",
]

#: Values larger than this are never ours; they are treated as misses without parsing.
MAX_VALUE_BYTES = 16 * 1024


#: One cached URL: ``(url, expires_at, cache_until)``. A plain tuple: built on every read.
Entry = tuple[str, int, int]


def signer_tag(signer_name: str) -> bytes:
    """Eight hex characters naming the signer (bucket, endpoint) inside stored values."""
    return hashlib.blake2b(signer_name.encode(), digest_size=4).hexdigest().encode()


def encode_entry(entry: Entry, tag: bytes, object_key: str) -> bytes:
    url, expires_at, cache_until = entry
    return b"%d %d %b %b %b" % (expires_at, cache_until, tag, url.encode(), _key_bytes(object_key))


def match_entry(
    raw: bytes | str | None, tag: bytes, object_key: str, now: float, min_validity: int
) -> Entry | None:
    """The entry in ``raw`` if it is ours, for ``object_key`` and still servable, else ``None``.

    Anything malformed is a miss, never an exception.
    """
    if raw is None:
        return None
    try:
        data = raw if type(raw) is bytes else str(raw).encode("utf-8", "surrogatepass")
        if len(data) > MAX_VALUE_BYTES:
            return None
        expires, until, their_tag, url, their_key = data.split(b" ", 4)
        if their_tag != tag or their_key != _key_bytes(object_key):
            return None
        expires_at = int(expires)
        cache_until = int(until)
        if cache_until <= now or expires_at - now < min_validity or not url:
            return None
        return (url.decode(), expires_at, cache_until)
    except (ValueError, UnicodeError):  # malformed: wrong field count, not numbers, not text
        return None


class StoredValue(NamedTuple):
    """Every field of a stored value, for maintenance (``CacheService``); reads use
    :func:`match_entry`, which checks without building this."""

    url: str
    expires_at: int
    cache_until: int
    tag: bytes
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
            tag,
            object_key.decode("utf-8", "surrogatepass"),
        )
    except (ValueError, UnicodeError):
        return None


def _key_bytes(object_key: str) -> bytes:
    return object_key.encode("utf-8", "surrogatepass")


class SharedStore(abc.ABC):
    """The shared cache behind the in-process layer (Redis in production).

    Every method may raise; :class:`~sqla_signed_urls.SignedURLs` turns failures into direct
    signing and opens its circuit breaker.
    """

    @abc.abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]:
        """Values for ``keys`` in order, in one round trip."""

    @abc.abstractmethod
    def set_many(self, items: Sequence[tuple[str, bytes, int, int]]) -> None:
        """Store ``(key, value, ttl_seconds, cache_until)`` items in one round trip."""

    @abc.abstractmethod
    def delete_many(self, keys: Sequence[str]) -> int:
        """Remove keys; return how many existed."""

    @abc.abstractmethod
    def publish(self, message: str) -> None:
        """Tell every process sharing this store (see :mod:`sqla_signed_urls.cache.local`)."""

    @abc.abstractmethod
    def scan_keys(self, count: int = 1000) -> Iterable[list[str]]:
        """Batches of the URL keys under the prefix (bookkeeping keys excluded)."""
