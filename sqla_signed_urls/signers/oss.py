"""Aliyun OSS signed URLs (the ``oss`` extra: ``pip install "sqla-signed-urls[oss]"``).

V1 URLs are signed by ``oss2``. V4 URLs are signed by our own code (:mod:`._v4`), byte for byte
what oss2's ``bucket.sign_url("GET", ...)`` gives at the same signing time, several times faster,
and at the signing time ``SignedURLs`` chooses, so they are stable.

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
from . import _v4
from .base import Signer, quote_key, quote_keys

__all__ = ["OSSSigner"]

#: OSS V4 signed URLs live at most 7 days.
V4_MAX_URL_TTL = 7 * 24 * 3600
#: OSS object keys are at most 1023 bytes of UTF-8.
MAX_KEY_BYTES = 1023


class OSSSigner(Signer):
    """Signs GET URLs for an ``oss2.Bucket``; V1, V4 and STS credentials all work::

        bucket = oss2.Bucket(oss2.Auth(key_id, key_secret), endpoint, "campus-forum")
        urls = SignedURLs(signer=OSSSigner(bucket))

        v4 = oss2.Bucket(oss2.AuthV4(key_id, key_secret), endpoint, "campus-forum",
                         region="cn-hangzhou")
        urls = SignedURLs(signer=OSSSigner(v4))

    V1 URLs are stable (the expiry is the only time in them). V4 URLs carry their signing time:
    ``SignedURLs`` passes the start of the current expiry window as ``signed_at``, so every
    process signing one key within one window makes the same URL; ``url_ttl`` is limited to 7
    days. Credentials are read from the bucket's auth on every signing, so refreshing providers
    work. Needs the ``oss`` extra.
    """

    def __init__(self, bucket: Any) -> None:
        oss2 = require("oss2", "oss", "OSSSigner")
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
        self._v4: _V4Signing | None = None
        if self.version == "v4":
            self.max_url_ttl = V4_MAX_URL_TTL
            self._v4 = _V4Signing.of(oss2, bucket, self._url_base)
            # An auth of its own kind is signed by oss2, at the current time: not stable.
            self.stable = self.takes_signed_at = self._v4 is not None

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

    def sign(self, object_key: str, *, expires_at: int, signed_at: int | None = None) -> str:
        """A GET URL for ``object_key`` valid until ``expires_at``. V4 URLs are signed at
        ``signed_at`` (now when ``None``) and live until exactly ``expires_at``."""
        return self.sign_with(object_key, expires_at=expires_at, signed_at=signed_at)

    def sign_with(
        self,
        object_key: str,
        *,
        expires_at: int,
        signed_at: int | None = None,
        response_content_disposition: str | None = None,
        response_content_type: str | None = None,
    ) -> str:
        """:meth:`sign`, asking OSS to answer with these ``Content-Disposition`` and
        ``Content-Type`` headers (``response-content-*`` parameters, signed into the URL)."""
        _check_key(object_key, self.bucket)
        overrides = _overrides(response_content_disposition, response_content_type)
        if self._v4 is not None:
            return self._v4.sign(object_key, expires_at, signed_at, overrides)
        params = dict(overrides) if overrides else None
        # oss2 takes a lifetime relative to its own clock; V1 puts the absolute expiry in the
        # URL. When the second has not changed between our two clock reads, oss2 (reading its
        # clock in between) added the lifetime to the same second; otherwise sign again.
        for _ in range(3):
            before = int(time.time())
            try:
                url: str = self.bucket.sign_url(
                    "GET", object_key, expires_at - before, params=params
                )
            except Exception as exc:
                raise SigningError(f"oss2 could not sign the key: {type(exc).__name__}") from exc
            if self.version != "v1" or int(time.time()) == before:
                return url
        return url


def _check_key(object_key: str, bucket: Any) -> None:
    if not isinstance(object_key, str) or not object_key.strip():
        raise SigningError("object key must be a non-empty str")
    if object_key in (".", ".."):
        raise SigningError(
            "object key '.' or '..' gives a URL path browsers rewrite (to the bucket root)"
        )
    if object_key.isascii():
        size = len(object_key)
    else:
        try:
            size = len(object_key.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise SigningError("object key is not valid Unicode text") from exc
    if size > MAX_KEY_BYTES:
        raise SigningError(f"object key is longer than OSS allows ({MAX_KEY_BYTES} bytes)")
    if object_key[0] == "?" and getattr(bucket, "is_verify_object_strict", False):
        raise SigningError(
            "object key begins with '?', which this bucket refuses "
            "(oss2.Bucket(..., is_verify_object_strict=False) allows it)"
        )


def _overrides(disposition: str | None, content_type: str | None) -> list[tuple[str, str]]:
    """The ``response-content-*`` query parameters asked for, in the order they are signed."""
    params = []
    for name, value in (
        ("response-content-disposition", disposition),
        ("response-content-type", content_type),
    ):
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise SigningError(f"{name}: expected a non-empty str, got {value!r}")
        params.append((name, value))
    return params


class _V4Signing:
    """OSS V4 query signing, as oss2's ``ProviderAuthV4._sign_url`` does it (no additional
    headers: a GET URL signs none), with the signing time given."""

    __slots__ = (
        "_credential_tail",
        "_keys",
        "_provider",
        "_quoted",
        "_resource",
        "_scope_tail",
        "_times",
        "_url_base",
    )

    def __init__(self, provider: Any, url_base: str, bucket_name: str, region: str, product: str):
        self._provider = provider
        self._url_base = url_base
        self._resource = f"/{quote_key(bucket_name)}/"
        self._scope_tail = f"/{region}/{product}/aliyun_v4_request"
        self._credential_tail = _v4.quote_param(self._scope_tail)
        self._keys = _v4.SigningKeys("aliyun_v4", region, product, "aliyun_v4_request")
        self._times = _v4.SigningTimes(V4_MAX_URL_TTL)
        #: The last credentials seen: (access key id, token, id quoted, token parameter).
        self._quoted: tuple[str, str | None, str, str] = ("", None, "", "")

    @classmethod
    def of(cls, oss2: Any, bucket: Any, url_base: str | None) -> _V4Signing | None:
        """Our own V4 signing for ``bucket``, or ``None`` when its auth is not oss2's own V4
        (``AuthV4``, ``ProviderAuthV4``, ``StsAuth(..., auth_version="v4")``)."""
        auth = bucket.auth
        inner = getattr(auth, "_StsAuth__auth", None) if isinstance(auth, oss2.StsAuth) else auth
        provider_auth = getattr(oss2, "ProviderAuthV4", None)
        if (
            url_base is None
            or provider_auth is None
            or not isinstance(inner, provider_auth)
            or type(inner)._sign_url is not provider_auth._sign_url
            or not hasattr(inner, "credentials_provider")
        ):
            return None
        region = getattr(bucket, "cloudbox_id", None) or getattr(bucket, "region", None)
        if not region or not isinstance(region, str):
            raise ConfigurationError(
                f"OSSSigner: V4 signing needs the bucket's region; build the bucket with "
                f"oss2.Bucket(auth, endpoint, {bucket.bucket_name!r}, region='cn-hangzhou') "
                "(the region of its endpoint)"
            )
        product = str(getattr(bucket, "product", None) or "oss")
        return cls(inner.credentials_provider, url_base, bucket.bucket_name, region, product)

    def sign(
        self,
        object_key: str,
        expires_at: int,
        signed_at: int | None,
        overrides: list[tuple[str, str]],
    ) -> str:
        stamp, lifetime = self._times.resolve(expires_at, signed_at)
        try:
            credentials = self._provider.get_credentials()
            access_key_id = credentials.get_access_key_id()
            secret = credentials.get_access_key_secret()
            token = credentials.get_security_token() or None
        except Exception as exc:
            raise SigningError(
                f"could not read the OSS credentials ({type(exc).__name__}); check the "
                "bucket's credentials provider"
            ) from exc
        quoted_credentials = self._quoted
        if quoted_credentials[0] != access_key_id or quoted_credentials[1] != token:
            quoted_credentials = self._quote_credentials(access_key_id, token)
        _, _, id_quoted, token_param = quoted_credentials
        try:
            quoted = quote_key(object_key)
        except UnicodeEncodeError:
            raise SigningError("object key is not valid Unicode text") from None
        date = stamp[:8]
        credential = f"{id_quoted}%2F{date}{self._credential_tail}"
        # oss2's order in the URL; sorted by name in the canonical query.
        auth = (
            f"x-oss-date={stamp}&x-oss-expires={lifetime}"
            f"&x-oss-signature-version=OSS4-HMAC-SHA256&x-oss-credential={credential}"
        )
        canonical_auth = (
            f"x-oss-credential={credential}&x-oss-date={stamp}&x-oss-expires={lifetime}"
            f"{token_param}&x-oss-signature-version=OSS4-HMAC-SHA256"
        )
        if overrides:
            asked = "&".join(f"{name}={_v4.quote_param(value)}" for name, value in overrides)
            url_query = f"{asked}{token_param}&{auth}"
            canonical_query = f"{asked}&{canonical_auth}"
        else:
            url_query = f"{token_param[1:]}&{auth}" if token_param else auth
            canonical_query = canonical_auth
        canonical_request = (
            f"GET\n{self._resource}{quoted.replace('%2F', '/')}\n{canonical_query}\n\n\n"
            "UNSIGNED-PAYLOAD"
        )
        string_to_sign = (
            f"OSS4-HMAC-SHA256\n{stamp}\n{date}{self._scope_tail}\n"
            f"{_v4.sha256_hex(canonical_request)}"
        )
        signature = self._keys.signature(secret, date, string_to_sign)
        return f"{self._url_base}{quoted}?{url_query}&x-oss-signature={signature}"

    def _quote_credentials(
        self, access_key_id: str, token: str | None
    ) -> tuple[str, str | None, str, str]:
        token_param = "" if token is None else f"&x-oss-security-token={_v4.quote_param(token)}"
        entry = (access_key_id, token, _v4.quote_param(access_key_id), token_param)
        self._quoted = entry
        return entry
