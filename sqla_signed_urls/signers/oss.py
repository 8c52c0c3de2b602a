"""Aliyun OSS signed URLs (the ``oss`` extra: ``pip install "sqla-signed-urls[oss]"``).

URLs are signed by our own code, byte for byte what oss2's ``bucket.sign_url("GET", ...)``
gives, several times faster: V1 URLs (HMAC-SHA1, the absolute expiry only) need no clock at all;
V4 URLs (:mod:`._v4`) are signed at the signing time ``SignedURLs`` chooses, so they are stable.
An auth class oss2 signs in a way of its own (one overriding ``_sign_url``, anonymous access) is
left to oss2.

This module imports without oss2, so ``from sqla_signed_urls.signers import OSSSigner`` always
works; building a signer without it raises :class:`~sqla_signed_urls.ConfigurationError` naming
the extra.
"""

from __future__ import annotations

import binascii
import hashlib
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
    work, and so does giving the bucket a new auth (``bucket.auth = oss2.StsAuth(...)``, as
    oss2 advises before STS credentials expire). Needs the ``oss`` extra.
    """

    def __init__(self, bucket: Any) -> None:
        oss2 = require("oss2", "oss", "OSSSigner")
        for attr in ("sign_url", "bucket_name", "auth"):
            if not hasattr(bucket, attr):
                raise ConfigurationError(
                    f"OSSSigner(bucket=...): expected an oss2.Bucket, got {type(bucket).__name__}"
                )
        self.bucket = bucket
        self._oss2 = oss2
        auth = bucket.auth
        self.version = str(auth.auth_version())
        self.name = f"oss:{bucket.bucket_name}@{getattr(bucket, 'endpoint', '')}"
        try:  # scheme, host and, for path-style endpoints, the bucket: "https://b.host/"
            self._url_base: str | None = str(bucket._make_url(bucket.bucket_name, ""))
        except Exception:
            self._url_base = None
        #: The bucket's auth and how we sign for it (``None``: oss2 signs).
        self._signing: tuple[Any, _V1Signing | _V4Signing | None] = (auth, self._signing_for(auth))
        if self.version == "v4":
            self.max_url_ttl = V4_MAX_URL_TTL
            # An auth of its own kind is signed by oss2, at the current time: not stable.
            self.stable = self.takes_signed_at = self._signing[1] is not None

    def __repr__(self) -> str:
        return f"OSSSigner(bucket={self.bucket.bucket_name!r}, version={self.version!r})"

    def _signing_for(self, auth: Any) -> _V1Signing | _V4Signing | None:
        """Our own signing for ``auth`` when it is one of oss2's own V1 or V4 auths of this
        signer's version, signing on a bucket whose ``sign_url`` is oss2's; else ``None``."""
        oss2, bucket = self._oss2, self.bucket
        if self._url_base is None or type(bucket).sign_url is not oss2.Bucket.sign_url:
            return None
        try:
            version = str(auth.auth_version())
        except Exception:
            return None
        if version != self.version:  # a new auth of another version: oss2 signs, as it can
            return None
        sts = oss2.StsAuth
        if isinstance(auth, sts):
            if type(auth)._sign_url is not sts._sign_url:
                return None
            auth = getattr(auth, "_StsAuth__auth", None)
        if version == "v1":
            return _V1Signing.of(oss2, auth, bucket.bucket_name, self._url_base)
        if version == "v4":
            return _V4Signing.of(oss2, auth, bucket, self._url_base)
        return None

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
        _check_key(object_key, self.bucket)
        return self._sign(object_key, expires_at, signed_at, [], [])

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
        """:meth:`sign`, asking OSS to answer with these ``Content-Disposition`` and
        ``Content-Type`` headers (``response-content-*`` parameters, signed into the URL),
        and with extra query parameters in the URL, such as an image variant's
        ``("x-oss-process", "image/resize,w_128")``: after the overrides, in the order given,
        as oss2 writes ``sign_url(..., params={...})``. V4 signs every parameter; V1 those OSS
        knows (``x-oss-process`` among them), as oss2 does. Parameters OSS signing writes
        itself (``Expires``, ``x-oss-date``, ...) and names given twice are refused."""
        _check_key(object_key, self.bucket)
        overrides = _overrides(response_content_disposition, response_content_type)
        extra = _params(params, overrides) if params else []
        return self._sign(object_key, expires_at, signed_at, overrides, extra)

    def _sign(
        self,
        object_key: str,
        expires_at: int,
        signed_at: int | None,
        overrides: list[tuple[str, str]],
        params: list[tuple[str, str]],
    ) -> str:
        auth = self.bucket.auth
        current = self._signing
        if current[0] is not auth:  # a new auth given to the bucket
            current = self._signing = (auth, self._signing_for(auth))
        signing = current[1]
        if signing is not None:
            return signing.sign(object_key, expires_at, signed_at, overrides, params)
        query = dict(overrides + params) or None
        # oss2 takes a lifetime relative to its own clock; V1 puts the absolute expiry in the
        # URL. When the second has not changed between our two clock reads, oss2 (reading its
        # clock in between) added the lifetime to the same second; otherwise sign again.
        for _ in range(3):
            before = int(time.time())
            try:
                url: str = self.bucket.sign_url(
                    "GET", object_key, expires_at - before, params=query
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


#: Query parameters OSS signing writes itself (V1, V4), lower-case: never taken as ``params``.
_OWN_PARAMS = frozenset(
    {
        "ossaccesskeyid",
        "expires",
        "signature",
        "security-token",
        "x-oss-security-token",
        "x-oss-date",
        "x-oss-expires",
        "x-oss-signature-version",
        "x-oss-credential",
        "x-oss-signature",
        "x-oss-additional-headers",
    }
)


def _params(
    params: Sequence[tuple[str, str]], overrides: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The extra query parameters asked for, checked, in the order given."""
    seen = {name for name, _ in overrides}
    checked = []
    for pair in params:
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise SigningError(f"params: expected (name, value) pairs, got {pair!r}") from None
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise SigningError(
                f"params: expected a non-empty str name and a str value, got {pair!r}"
            )
        if name.lower() in _OWN_PARAMS:
            raise SigningError(f"params: {name!r} is a parameter OSS signing writes itself")
        if name in seen:
            raise SigningError(f"params: {name!r} is given twice")
        for text in (name, value):
            if not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:
                    raise SigningError(f"params: {name!r} is not valid Unicode text") from None
        seen.add(name)
        checked.append((name, value))
    return checked


def _query_pair(name: str, value: str) -> str:
    """A parameter as oss2 writes it into the URL: quoted, the name alone when the value is
    empty."""
    if value:
        return f"{_v4.quote_param(name)}={_v4.quote_param(value)}"
    return _v4.quote_param(name)


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
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise SigningError(f"{name}: not valid Unicode text") from None
        params.append((name, value))
    return params


class _V4Signing:
    """OSS V4 query signing, as oss2's ``ProviderAuthV4._sign_url`` does it (no additional
    headers: a GET URL signs none), with the signing time given."""

    __slots__ = (
        "_auth",
        "_credential_tail",
        "_keys",
        "_quoted",
        "_resource",
        "_scope_tail",
        "_times",
        "_url_base",
    )

    def __init__(self, auth: Any, url_base: str, bucket_name: str, region: str, product: str):
        self._auth = auth
        self._url_base = url_base
        self._resource = f"/{quote_key(bucket_name)}/"
        self._scope_tail = f"/{region}/{product}/aliyun_v4_request"
        self._credential_tail = _v4.quote_param(self._scope_tail)
        self._keys = _v4.SigningKeys("aliyun_v4", region, product, "aliyun_v4_request")
        self._times = _v4.SigningTimes(V4_MAX_URL_TTL)
        #: The last credentials seen: (access key id, token, id quoted, token parameter).
        self._quoted: tuple[str, str | None, str, str] = ("", None, "", "")

    @classmethod
    def of(cls, oss2: Any, auth: Any, bucket: Any, url_base: str) -> _V4Signing | None:
        """Our own V4 signing with ``auth`` (the one inside an ``StsAuth``), or ``None`` when
        it is not oss2's own V4 (``AuthV4``, ``ProviderAuthV4``)."""
        provider_auth = getattr(oss2, "ProviderAuthV4", None)
        if (
            provider_auth is None
            or not isinstance(auth, provider_auth)
            or type(auth)._sign_url is not provider_auth._sign_url
            or not hasattr(auth, "credentials_provider")
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
        return cls(auth, url_base, bucket.bucket_name, region, product)

    def sign(
        self,
        object_key: str,
        expires_at: int,
        signed_at: int | None,
        overrides: list[tuple[str, str]],
        params: list[tuple[str, str]],
    ) -> str:
        stamp, lifetime = self._times.resolve(expires_at, signed_at)
        try:
            credentials = self._auth.credentials_provider.get_credentials()
            access_key_id = credentials.get_access_key_id()
            secret = credentials.get_access_key_secret()
            token = credentials.get_security_token() or None
        except Exception as exc:
            raise _credentials_error(exc) from exc
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
        if params:
            # Any names: the canonical query is every parameter, encoded, sorted by name.
            asked = "&".join(_query_pair(name, value) for name, value in overrides + params)
            url_query = f"{asked}{token_param}&{auth}"
            named = [
                (_v4.quote_param(name), _v4.quote_param(value))
                for name, value in overrides + params
            ]
            for part in canonical_auth.split("&"):
                name, _, value = part.partition("=")
                named.append((name, value))
            canonical_query = "&".join(
                f"{name}={value}" if value else name for name, value in sorted(named)
            )
        elif overrides:
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


def _credentials_error(exc: Exception) -> SigningError:
    return SigningError(
        f"could not read the OSS credentials ({type(exc).__name__}); check the "
        "bucket's credentials provider"
    )


#: What oss2's V1 signing must do as ``ProviderAuth`` does for our signing to be the same.
_V1_METHODS = (
    "_sign_url",
    "_ProviderAuth__make_signature",
    "_ProviderAuth__get_bytes_to_sign",
    "_ProviderAuth__get_headers_bytes",
    "_ProviderAuth__get_resource_string",
    "_ProviderAuth__get_subresource_string",
    "_ProviderAuth__param_to_query",
)
#: The query parameters we sign that oss2 signs as subresources (sorted by name).
_V1_SUBRESOURCES = frozenset(
    {"response-content-disposition", "response-content-type", "security-token"}
)


class _V1Credentials:
    """What one set of V1 credentials adds to every URL, worked out once."""

    __slots__ = ("access_key_id", "mac", "secret", "signed_token", "tail", "token", "url_token")

    def __init__(self, access_key_id: Any, secret: Any, token: str | None) -> None:
        self.access_key_id = access_key_id
        self.secret = secret
        self.token = token
        if isinstance(secret, str):
            try:
                key = secret.encode()
            except UnicodeEncodeError:
                raise SigningError("the OSS access key secret is not valid Unicode text") from None
        elif isinstance(secret, bytes):
            key = secret
        else:
            raise SigningError(f"the OSS access key secret is a {type(secret).__name__}, not a str")
        if token is not None and not isinstance(token, str):
            raise SigningError(f"the OSS security token is a {type(token).__name__}, not a str")
        self.mac = _v4.Hmac(key, hashlib.sha1)
        try:
            quoted_id = _v4.quote_param(access_key_id) if access_key_id else ""
            quoted_token = "" if token is None else _v4.quote_param(token)
        except (TypeError, UnicodeEncodeError) as exc:
            raise SigningError(
                f"the OSS access key id or security token cannot be quoted ({type(exc).__name__})"
            ) from None
        #: How the query ends, but for the expiry and the signature.
        self.tail = (
            f"OSSAccessKeyId={quoted_id}&Expires=" if quoted_id else "OSSAccessKeyId&Expires="
        )
        #: The token's query parameter, with the "&" after it, and as it is signed.
        self.url_token = "" if token is None else f"security-token={quoted_token}&"
        self.signed_token = "" if token is None else f"security-token={token}"


class _V1Signing:
    """OSS V1 query signing, as oss2's ``ProviderAuth._sign_url`` does it for a GET without
    headers: the Base64 HMAC-SHA1, by the secret, of ``GET\\n\\n\\n<Expires>\\n/<bucket>/<key>``
    followed by the signed query parameters (the ``response-content-*`` overrides, the
    security token and the extra parameters oss2 counts as subresources, such as
    ``x-oss-process``: sorted by name, unquoted). ``Expires`` is the absolute expiry, so no
    clock is read."""

    __slots__ = ("_auth", "_credentials", "_resource", "_subresources", "_url_base")

    def __init__(self, auth: Any, url_base: str, bucket_name: str) -> None:
        self._auth = auth
        self._url_base = url_base
        self._resource = f"/{bucket_name}/"
        #: The query parameters oss2 signs (the others are in the URL, unsigned).
        self._subresources = frozenset(auth._subresource_key_set)
        self._credentials: _V1Credentials | None = None

    @classmethod
    def of(cls, oss2: Any, auth: Any, bucket_name: Any, url_base: str) -> _V1Signing | None:
        """Our own V1 signing with ``auth`` (the one inside an ``StsAuth``), or ``None`` when
        it is not oss2's own V1 (``Auth``, ``ProviderAuth``) or signs in a way of its own."""
        provider_auth = getattr(oss2, "ProviderAuth", None)
        if (
            provider_auth is None
            or not isinstance(auth, provider_auth)
            or any(
                getattr(type(auth), name, None) is not getattr(provider_auth, name, None)
                for name in _V1_METHODS
            )
            or not _V1_SUBRESOURCES.issubset(getattr(auth, "_subresource_key_set", ()))
            or not hasattr(auth, "credentials_provider")
            or not isinstance(bucket_name, str)
            or not bucket_name
        ):
            return None
        return cls(auth, url_base, bucket_name)

    def sign(
        self,
        object_key: str,
        expires_at: int,
        signed_at: int | None,
        overrides: list[tuple[str, str]],
        params: list[tuple[str, str]],
    ) -> str:
        if type(expires_at) is not int:
            expires_at = _v4.whole_seconds("expires_at", expires_at)
        try:
            credentials = self._auth.credentials_provider.get_credentials()
            access_key_id = credentials.get_access_key_id()
            secret = credentials.get_access_key_secret()
            token = credentials.get_security_token() or None
        except Exception as exc:
            raise _credentials_error(exc) from exc
        known = self._credentials
        if (
            known is None
            or known.access_key_id != access_key_id
            or known.secret != secret
            or known.token != token
        ):
            known = self._credentials = _V1Credentials(access_key_id, secret, token)
        try:
            quoted = quote_key(object_key)
        except UnicodeEncodeError:
            raise SigningError("object key is not valid Unicode text") from None
        expires = str(expires_at)
        if params:
            asked = "&".join(_query_pair(name, value) for name, value in overrides + params)
            query = f"{asked}&{known.url_token}{known.tail}{expires}"
            subresources = self._subresources
            named = [(name, value) for name, value in overrides + params if name in subresources]
            if known.token is not None:
                named.append(("security-token", known.token))
            signed = "&".join(f"{name}={value}" if value else name for name, value in sorted(named))
            resource = f"{self._resource}{object_key}"
            if signed:
                resource = f"{resource}?{signed}"
            string_to_sign = f"GET\n\n\n{expires}\n{resource}"
        elif overrides:  # response-content-* only: signed, and sorted before security-token
            signed = "&".join(f"{name}={value}" for name, value in overrides)
            if known.signed_token:
                signed = f"{signed}&{known.signed_token}"
            asked = "&".join(f"{name}={_v4.quote_param(value)}" for name, value in overrides)
            query = f"{asked}&{known.url_token}{known.tail}{expires}"
            string_to_sign = f"GET\n\n\n{expires}\n{self._resource}{object_key}?{signed}"
        else:
            query = f"{known.url_token}{known.tail}{expires}"
            if known.signed_token:
                string_to_sign = (
                    f"GET\n\n\n{expires}\n{self._resource}{object_key}?{known.signed_token}"
                )
            else:
                string_to_sign = f"GET\n\n\n{expires}\n{self._resource}{object_key}"
        signature = binascii.b2a_base64(known.mac.digest(string_to_sign), newline=False).decode()
        # quote(signature, safe=""), as oss2 writes it: Base64 holds no other reserved character
        signature = signature.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
        return f"{self._url_base}{quoted}?{query}&Signature={signature}"
