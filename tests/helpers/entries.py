"""Cache entries written and read as the core does, for the CacheService tests
(``tests/ops``, and on a Redis Cluster in ``tests/servers``).
"""

from __future__ import annotations

import time
from typing import Any

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.cache.base import encode_entry, signer_tag


def raw_key(redis_client: Any, key: str) -> bytes | None:
    value: bytes | None = redis_client.get(key)
    return value


def put_entry(
    urls: SignedURLs,
    key: str,
    object_key: str,
    *,
    cache_left: int,
    url_left: int | None = None,
    url: str | None = None,
) -> bytes:
    """Write an entry as the core does, ending its cache lifetime ``cache_left`` from now."""
    now = int(time.time())
    until = now + cache_left
    expires_at = now + (
        url_left if url_left is not None else cache_left + urls.settings.min_validity
    )
    url = url or f"https://files.test/{object_key}?expires={expires_at}&sig=old"
    value = encode_entry((url, expires_at, until), signer_tag(urls.signer.name), object_key)
    urls.redis.set(key, value, ex=cache_left)
    urls.redis.zadd(f"{urls.settings.key_prefix}#expiry", {key: until})
    return value


def fields(raw: bytes) -> tuple[int, int, str]:
    expires, until, _, url, _ = raw.split(b" ", 4)
    return int(expires), int(until), url.decode()
