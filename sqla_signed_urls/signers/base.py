"""The signer interface: turn an object key and an absolute expiry into a URL."""

from __future__ import annotations

import abc

__all__ = ["Signer"]


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
    #: True when signing one key with one ``expires_at`` always gives the same URL.
    #: Schemes that embed the signing time (OSS V4) are not stable: processes then share URLs
    #: only through the Redis cache.
    stable: bool = True

    @abc.abstractmethod
    def sign(self, object_key: str, *, expires_at: int) -> str:
        """Return a URL for ``object_key`` valid until ``expires_at`` (Unix seconds).

        Raise :class:`~sqla_signed_urls.exceptions.SigningError` when the key cannot be signed.
        """

    def url_prefix(self, object_key: str) -> str | None:
        """How every URL this signer makes for ``object_key`` begins (scheme, host, path and
        the ``?``), or ``None`` when that cannot be told.

        A cached URL that does not begin with it is never served, so a value forged or
        corrupted in Redis cannot send a page to another object or another host.
        """
        return None
