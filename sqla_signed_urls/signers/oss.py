"""Aliyun OSS signing through ``oss2`` (the ``oss`` extra: ``pip install "sqla-signed-urls[oss]"``).

This module imports without oss2, so ``from sqla_signed_urls.signers import OSSSigner`` always
works; building a signer without it raises :class:`~sqla_signed_urls.ConfigurationError` naming
the extra.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .._extras import require
from ..exceptions import ConfigurationError, SigningError
from .base import Signer, quote_key, quote_keys

__all__ = ["OSSSigner"]

#: OSS V4 signed URLs live at most 7 days.
V4_MAX_URL_TTL = 7 * 24 * 3600
#: OSS object keys are at most 1023 bytes of UTF-8.
MAX_KEY_BYTES = 1023


class OSSSigner(Signer):
    """Signs GET URLs with an ``oss2.Bucket``; V1, V4 and STS credentials all work::

        bucket = oss2.Bucket(oss2.Auth(key_id, key_secret), endpoint, "campus-forum")
        urls = SignedURLs(signer=OSSSigner(bucket))

    V1 URLs are stable (the expiry is the only time in them). V4 URLs embed the signing time,
    so each signing gives a new URL; the shared Redis cache is what keeps them identical across
    processes, and ``url_ttl`` is limited to 7 days. Needs the ``oss`` extra.
    """

    def __init__(self, bucket: Any) -> None:
        require("oss2", "oss", "OSSSigner")
        for attr in ("sign_url", "bucket_name", "auth"):
            if not hasattr(bucket, attr):
                raise ConfigurationError(
                    f"OSSSigner(bucket=...): expected an oss2.Bucket, got {type(bucket).__name__}"
                )
        self.bucket = bucket
        self.version = str(bucket.auth.auth_version())
        self.name = f"oss:{bucket.bucket_name}@{getattr(bucket, 'endpoint', '')}"
        try:  # scheme, host and, for path-style endpoints, the bucket: "https://b.host/"
            self._url_base: str | None = str(bucket._make_url(bucket.bucket_name, ""))
        except Exception:
            self._url_base = None
        if self.version == "v4":
            self.max_url_ttl = V4_MAX_URL_TTL
            self.stable = False

    def __repr__(self) -> str:
        return f"OSSSigner(bucket={self.bucket.bucket_name!r}, version={self.version!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OSSSigner:
        """Build a signer from ``OSS_ACCESS_KEY_ID``, ``OSS_ACCESS_KEY_SECRET``,
        ``OSS_ENDPOINT`` and ``OSS_BUCKET``; ``OSS_REGION`` selects V4 signing and
        ``OSS_SESSION_TOKEN`` STS credentials."""
        oss2 = require("oss2", "oss", "OSSSigner")

        env = os.environ if environ is None else environ
        required = ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_ENDPOINT", "OSS_BUCKET")
        missing = [name for name in required if not env.get(name)]
        if missing:
            raise ConfigurationError(
                f"OSS signing needs the environment variables {', '.join(missing)}; "
                "set them, or pass a signer (LocalSigner for offline use)"
            )
        region = env.get("OSS_REGION") or None
        version = oss2.AUTH_VERSION_4 if region else oss2.AUTH_VERSION_1
        key_id, secret = env["OSS_ACCESS_KEY_ID"], env["OSS_ACCESS_KEY_SECRET"]
        token = env.get("OSS_SESSION_TOKEN")
        if token:
            auth = oss2.StsAuth(key_id, secret, token, auth_version=version)
        else:
            auth = oss2.make_auth(key_id, secret, version)
        return cls(oss2.Bucket(auth, env["OSS_ENDPOINT"], env["OSS_BUCKET"], region=region))

    def url_prefix(self, object_key: str) -> str | None:
        if self._url_base is None:
            return None
        return f"{self._url_base}{quote_key(object_key)}?"

    def url_prefixes(self, object_keys: Sequence[str]) -> list[str | None]:
        base = self._url_base
        if base is None:
            return [None] * len(object_keys)
        return [f"{base}{quoted}?" for quoted in quote_keys(object_keys)]

    def sign(self, object_key: str, *, expires_at: int) -> str:
        if not isinstance(object_key, str) or not object_key.strip():
            raise SigningError("object key must be a non-empty str")
        if object_key in (".", ".."):
            raise SigningError(
                "object key '.' or '..' gives a URL path browsers rewrite (to the bucket root)"
            )
        try:
            size = len(object_key.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise SigningError("object key is not valid Unicode text") from exc
        if size > MAX_KEY_BYTES:
            raise SigningError(f"object key is longer than OSS allows ({MAX_KEY_BYTES} bytes)")
        # oss2 takes a lifetime relative to its own clock; V1 puts the absolute expiry in the
        # URL. When the second has not changed between our two clock reads, oss2 (reading its
        # clock in between) added the lifetime to the same second; otherwise sign again.
        for _ in range(3):
            before = int(time.time())
            try:
                url: str = self.bucket.sign_url("GET", object_key, expires_at - before)
            except Exception as exc:
                raise SigningError(f"oss2 could not sign the key: {type(exc).__name__}") from exc
            if self.version != "v1" or int(time.time()) == before:
                return url
        return url
