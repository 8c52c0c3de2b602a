"""The signer interface: turn an object key and an absolute expiry into a URL."""

from __future__ import annotations

import abc
import re
import string
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from ..exceptions import SigningError

__all__ = ["Signer"]

_PLAIN = re.compile(r"[A-Za-z0-9_.~/-]*").fullmatch
#: What quote() leaves alone with safe="/" (unreserved characters and "/"), plus the newline
#: quote_keys() joins keys with.
_PLAIN_BYTES = (string.ascii_letters + string.digits + "_.~-/\n").encode()


def quote_key(object_key: str, safe: str = "") -> str:
    """``urllib.parse.quote(object_key, safe=safe)`` for ``safe`` ``""`` or ``"/"``.

    ``quote`` walks the key byte by byte in Python (about 4 us for a typical key); keys made
    of unreserved characters and slashes, the common case, take one regex match instead. The
    read path checks the prefix of every URL it takes from Redis with it.
    """
    if _PLAIN(object_key) is not None:
        return object_key if safe == "/" else object_key.replace("/", "%2F")
    return quote(object_key, safe=safe)


def quote_keys(object_keys: Sequence[str], safe: str = "") -> list[str]:
    """:func:`quote_key` of each key. A page's keys, when all plain, are checked and quoted in
    one pass over their join instead of one regex match each (a third of the cost)."""
    joined = "\n".join(object_keys)
    if (
        joined.isascii()
        and not joined.encode().translate(None, _PLAIN_BYTES)
        and joined.count("\n") == len(object_keys) - 1  # no key holds a newline itself
    ):
        return (joined if safe == "/" else joined.replace("/", "%2F")).split("\n")
    return [quote_key(key, safe) for key in object_keys]


class Signer(abc.ABC):
    """Produces signed URLs. Implement :meth:`sign` and set :attr:`name`.

    ``name`` identifies where URLs point (bucket, endpoint); it is part of the fingerprint stored
    beside every cached URL, so switching buckets never serves a URL for the old one::

        class MySigner(Signer):
            name = "cdn:images"

            def sign(self, object_key: str, *, expires_at: int) -> str:
                return my_cdn.presign(object_key, expires_at)
    """

    name: str
    #: The longest URL lifetime the scheme accepts, in seconds (``None``: no limit).
    max_url_ttl: int | None = None
    #: True when signing one key with one ``expires_at`` (and ``signed_at``, for signers that
    #: take it) always gives the same URL. A scheme that writes the current time into the URL
    #: is not stable: processes then share URLs only through the Redis cache.
    stable: bool = True
    #: True when :meth:`sign` also takes ``signed_at``, the signing time to write into the URL
    #: (V4 schemes). ``SignedURLs`` then passes the start of the current expiry window
    #: (``url_window``), so every process signing one key within one window makes the same URL.
    takes_signed_at: bool = False

    @abc.abstractmethod
    def sign(self, object_key: str, *, expires_at: int) -> str:
        """Return a URL for ``object_key`` valid until ``expires_at`` (Unix seconds).

        Raise :class:`~sqla_signed_urls.exceptions.SigningError` when the key cannot be signed.
        A signer with :attr:`takes_signed_at` accepts ``signed_at: int | None = None`` too.
        """

    def sign_with(
        self,
        object_key: str,
        *,
        expires_at: int,
        signed_at: int | None = None,
        response_content_disposition: str | None = None,
        response_content_type: str | None = None,
        params: Sequence[tuple[str, str]] = (),
    ) -> str:
        """:meth:`sign`, with response headers for the store to answer with
        (``response-content-disposition``, ``response-content-type``) and extra query
        parameters (an image variant's processing) signed into the URL.

        ``SignedURLs`` calls it for ``ObjectKey(download_name=..., content_type=...,
        variants=...)``. This default signs a plain URL and raises ``SigningError`` when asked
        for more; ``OSSSigner``, ``S3Signer`` and ``LocalSigner`` override it.
        """
        if response_content_disposition or response_content_type or params:
            raise SigningError(
                f"{type(self).__name__} cannot sign response headers or parameters into its "
                "URLs (download names, variants): use OSSSigner, S3Signer or LocalSigner, or "
                "override Signer.sign_with"
            )
        sign: Any = self.sign
        if self.takes_signed_at:
            return str(sign(object_key, expires_at=expires_at, signed_at=signed_at))
        return str(sign(object_key, expires_at=expires_at))

    def url_prefix(self, object_key: str) -> str | None:
        """How every URL this signer makes for ``object_key`` begins (scheme, host, path and
        the ``?``), or ``None`` when that cannot be told.

        A cached URL that does not begin with it is never served, so a value forged or
        corrupted in Redis cannot send a page to another object or another host.
        """
        return None

    def url_prefixes(self, object_keys: Sequence[str]) -> list[str | None]:
        """:meth:`url_prefix` of each key; override it when a batch is cheaper."""
        return [self.url_prefix(key) for key in object_keys]

    def url_is_for(self, url: str, object_key: str) -> bool:
        """Whether ``url`` begins with :meth:`url_prefix` (true when that cannot be told)."""
        prefix = self.url_prefix(object_key)
        return prefix is None or url.startswith(prefix)
