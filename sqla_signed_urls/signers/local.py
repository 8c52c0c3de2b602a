"""HMAC-signed URLs for apps that serve files themselves, and for offline demos."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..exceptions import ConfigurationError, SignatureError, SigningError
from .base import Signer, quote_key, quote_keys

__all__ = ["LocalSigner", "VerifiedURL"]


def check_object_key(object_key: str) -> None:
    """Reject keys that cannot round-trip through a URL path unchanged."""
    if not isinstance(object_key, str) or not object_key:
        raise SigningError("object key must be a non-empty str")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in object_key):
        raise SigningError("object key contains a control character")
    try:
        object_key.encode("utf-8")
    except UnicodeEncodeError:
        raise SigningError("object key is not valid Unicode text") from None
    if any(part in ("", ".", "..") for part in object_key.split("/")):
        raise SigningError(
            "object key has an empty, '.' or '..' path segment "
            "(browsers would rewrite the URL path)"
        )


class VerifiedURL(NamedTuple):
    """What :meth:`LocalSigner.verified` found in a valid URL."""

    object_key: str
    #: The signed parameters besides the expiry (response headers, a variant's parameters).
    params: dict[str, str]


class LocalSigner(Signer):
    """Signs ``<base_url>/<key>?expires=<t>&signature=<hmac>`` with a secret of your own.

    The app that hands out the URLs also serves them, checking each with :meth:`verify`::

        signer = LocalSigner(secret=os.environ["FILES_SECRET"], base_url="/files")
        url = signer.sign("avatars/7.png", expires_at=int(time.time()) + 3600)
        signer.verify(url)  # -> "avatars/7.png", or SignatureError

    URLs are stable: one key and expiry always give the same URL, in every process. The
    default ``name`` carries a fingerprint of the secret, so cached URLs signed with an old
    secret are never served after it changes.
    """

    def __init__(self, secret: str | bytes, base_url: str, *, name: str | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ConfigurationError(
                "LocalSigner(secret=...): the secret must be at least 16 bytes; "
                "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        if not isinstance(base_url, str) or not base_url:
            raise ConfigurationError(
                f"LocalSigner(base_url={base_url!r}): give the URL prefix files are served under, "
                "such as '/files' or 'https://example.com/files'"
            )
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self._base_path = urlsplit(self.base_url).path
        # A fingerprint of the secret in the name (hashed again into every cached value's
        # signer tag): after the secret changes, URLs signed with the old one are misses.
        fingerprint = hashlib.blake2b(secret, digest_size=4, person=b"local-signer").hexdigest()
        self.name = name or f"local:{self.base_url}#{fingerprint}"

    def __repr__(self) -> str:
        return f"LocalSigner(base_url={self.base_url!r})"

    def _signature(self, object_key: str, expires_at: int, extra: str = "") -> str:
        message = f"{object_key}\n{expires_at}".encode()
        if extra:
            message += b"\n" + extra.encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def url_prefix(self, object_key: str) -> str:
        return f"{self.base_url}/{quote_key(object_key, safe='/')}?"

    def url_prefixes(self, object_keys: Sequence[str]) -> list[str | None]:
        return [f"{self.base_url}/{quoted}?" for quoted in quote_keys(object_keys, safe="/")]

    def sign(self, object_key: str, *, expires_at: int) -> str:
        check_object_key(object_key)
        signature = self._signature(object_key, expires_at)
        return (
            f"{self.base_url}/{quote_key(object_key, safe='/')}"
            f"?expires={expires_at}&signature={signature}"
        )

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
        """:meth:`sign`, with the response headers to serve the file with and extra
        parameters signed into the URL; :meth:`verified` gives them back to the app that
        serves it (which should set ``Content-Disposition`` and ``Content-Type`` from them)."""
        pairs = [
            (name, value)
            for name, value in (
                ("response-content-disposition", response_content_disposition),
                ("response-content-type", response_content_type),
                *params,
            )
            if value is not None
        ]
        if not pairs:
            return self.sign(object_key, expires_at=expires_at)
        check_object_key(object_key)
        for name, value in pairs:
            if name in ("expires", "signature") or not isinstance(value, str):
                raise SigningError(f"URL parameter {name!r} cannot be signed by LocalSigner")
        extra = urlencode(pairs)
        signature = self._signature(object_key, expires_at, extra)
        return (
            f"{self.base_url}/{quote_key(object_key, safe='/')}"
            f"?{extra}&expires={expires_at}&signature={signature}"
        )

    def verify(self, url: str, *, now: float | None = None) -> str:
        """Return the object key of a URL this signer made, or raise ``SignatureError``.

        ``url`` may be absolute or just the path and query (as a web framework sees it).
        """
        return self.verified(url, now=now).object_key

    def verified(self, url: str, *, now: float | None = None) -> VerifiedURL:
        """:meth:`verify`, also giving the signed parameters (``response-content-disposition``
        and ``response-content-type`` to answer with, a variant's parameters)::

            found = signer.verified(request.full_path)
            headers = {"Content-Disposition": found.params.get("response-content-disposition")}
        """
        parts = urlsplit(url)
        prefix = self._base_path + "/"
        if not parts.path.startswith(prefix):
            raise SignatureError(f"URL path is not under {self._base_path or '/'}")
        object_key = unquote(parts.path[len(prefix) :], errors="strict")
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        expires = [v for k, v in pairs if k == "expires"]
        signature = [v for k, v in pairs if k == "signature"]
        if len(expires) != 1 or len(signature) != 1 or not expires[0].isdigit():
            raise SignatureError("URL lacks a single 'expires' and 'signature'")
        extras = [(k, v) for k, v in pairs if k not in ("expires", "signature")]
        expires_at = int(expires[0])
        expected = self._signature(object_key, expires_at, urlencode(extras))
        if not hmac.compare_digest(expected.encode(), signature[0].encode()):
            raise SignatureError("signature does not match")
        if expires_at <= (time.time() if now is None else now):
            raise SignatureError("URL has expired")
        return VerifiedURL(object_key, dict(extras))
