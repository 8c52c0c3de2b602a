"""What the cache layers store, and the interface of the shared (L2) store.

A cached value is readable text, never a pickle::

    1764205200 1764193500 9f2c4e1ab07d3e55 https://campus-forum.oss-cn-hangzhou.aliyuncs.com/...

that is: URL expiry, end of the cache lifetime (both Unix seconds), fingerprint of what was
signed (signer name and object key), and the URL itself, verbatim.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = ["Entry", "SharedStore", "decode_entry", "encode_entry", "fingerprint"]

#: Values larger than this are never ours; they are treated as misses without parsing.
MAX_VALUE_BYTES = 16 * 1024


class Entry(NamedTuple):
    """One cached URL."""

    url: str
    expires_at: int
    cache_until: int
    fingerprint: str


def fingerprint(signer_name: str, object_key: str) -> str:
    """Short hash of what was signed; a cached URL is served only when it matches."""
    data = f"{signer_name}\0{object_key}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def encode_entry(entry: Entry) -> bytes:
    return f"{entry.expires_at} {entry.cache_until} {entry.fingerprint} {entry.url}".encode()


def decode_entry(raw: bytes | str | None) -> Entry | None:
    """Parse a stored value; anything malformed is ``None`` (a miss), never an exception."""
    if raw is None or len(raw) > MAX_VALUE_BYTES:
        return None
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        expires, until, fp, url = text.split(" ", 3)
        if not (expires.isdigit() and until.isdigit()) or len(fp) != 16 or not url:
            return None
        return Entry(url, int(expires), int(until), fp)
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None


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
