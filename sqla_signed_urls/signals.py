"""Blinker signals for admin and metrics hooks.

Connect a receiver to follow what the cache does::

    from sqla_signed_urls import signals

    @signals.cache_miss.connect
    def on_miss(model, keys):
        metrics.incr("file_url.miss", len(keys))

Signals on the per-access path (``cache_hit``, ``cache_miss``) are only sent while a receiver is
connected, so an unobserved cache pays nothing for them.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = [
    "cache_cleared",
    "cache_error",
    "cache_hit",
    "cache_miss",
    "cache_warmed",
    "sign_failed",
    "url_invalidated",
    "url_signed",
    "urls_refreshed",
]

_signals = Namespace()

cache_hit = _signals.signal("cache-hit")
"""A URL was served from the cache.

Sender: the mapped class. Kwargs: ``keys`` (list of cache keys).
"""

cache_miss = _signals.signal("cache-miss")
"""No usable cached URL was found. Sender: the mapped class. Kwargs: ``keys``."""

url_signed = _signals.signal("url-signed")
"""The signer produced new URLs. Sender: the mapped class. Kwargs: ``keys``."""

url_invalidated = _signals.signal("url-invalidated")
"""Cached URLs were dropped after a commit, once per class and commit.

Sender: the mapped class. Kwargs: ``keys``.
"""

sign_failed = _signals.signal("sign-failed")
"""The signer raised; the attribute returned ``None``.

Sender: the mapped class. Kwargs: ``keys``, ``error`` (the :class:`~sqla_signed_urls.SigningError`).
"""

cache_error = _signals.signal("cache-error")
"""Redis could not be used; the URL was signed directly.

Sender: the :class:`~sqla_signed_urls.SignedURLs`. Kwargs: ``error`` (the exception).
"""

cache_cleared = _signals.signal("cache-cleared")
"""``CacheService.clear_file_url_cache`` ran.

Sender: the service. Kwargs: ``count``, ``file_id``.
"""

cache_warmed = _signals.signal("cache-warmed")
"""``CacheService.warm_file_url_cache`` ran.

Sender: the service. Kwargs: ``count``, ``file_type``.
"""

urls_refreshed = _signals.signal("urls-refreshed")
"""``CacheService.refresh_expired_urls`` ran.

Sender: the service. Kwargs: ``count``, ``within``.
"""
