"""What the V4 presigners share: signing times, lifetimes and derived signing keys.

AWS SigV4 (``S3Signer``) and OSS V4 (``OSSSigner``) sign the same way: a canonical request is
hashed into a string to sign, which is signed with a key derived from the secret, the date, the
region and the service by four HMAC-SHA256 steps. Deriving the key costs four of the five HMACs
of a signing, so it is cached per secret and date, its HMAC key blocks already hashed. The
signing time is written into the URL; ``SignedURLs`` passes the start of the current expiry
window, so every process signing one key within one window writes the same time and makes the
same URL.

``Hmac`` (an HMAC with its key blocks hashed once) also signs OSS V1 URLs, with SHA-1.
Everything here is plain ``hmac``/``hashlib``: no SDK is called.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..exceptions import SigningError

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = ["Hmac", "SigningKeys", "SigningTimes", "quote_param", "sha256_hex", "whole_seconds"]

_hmac_digest = hmac.digest
_sha256 = hashlib.sha256
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch
#: Each byte as quote_param() writes it: unreserved ones as they are, the others escaped.
_ESCAPED = [
    chr(b) if chr(b) in string.ascii_letters + string.digits + "_.~-" else f"%{b:02X}"
    for b in range(256)
].__getitem__
#: Derived keys kept per signer (a few dates and, across a credential rotation, two secrets).
_KEYS_KEPT = 8


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of ``text`` encoded as UTF-8."""
    return _sha256(text.encode()).hexdigest()


def quote_param(value: str) -> str:
    """A query parameter name or value as both V4 schemes (and OSS V1) encode it: every byte of
    the UTF-8 encoding percent-escaped (upper-case hex) except letters, digits and ``-_.~``.

    Exactly ``urllib.parse.quote(value, safe="")``, in a third less time: one table lookup per
    byte in C instead of ``quote``'s per-byte Python.
    """
    if not isinstance(value, str):  # bytes: as quote takes them
        return quote(value, safe="")
    if _UNRESERVED(value) is not None:
        return value
    return "".join(map(_ESCAPED, value.encode()))


class Hmac:
    """An HMAC with one key, its padded key blocks hashed once: a signature then costs two hash
    copies and updates (half of what a one-shot ``hmac.digest`` costs). SHA-256 by default;
    OSS V1 signs with ``Hmac(secret, hashlib.sha1)``."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, hash_new: Callable[[bytes], _Hash] = _sha256) -> None:
        block_size = hash_new(b"").block_size
        if len(key) > block_size:  # as RFC 2104 says: a long key is hashed first
            key = hash_new(key).digest()
        block = key.ljust(block_size, b"\0")
        self._inner = hash_new(bytes(b ^ 0x36 for b in block))
        self._outer = hash_new(bytes(b ^ 0x5C for b in block))

    def digest(self, text: str) -> bytes:
        """The HMAC of ``text`` encoded as UTF-8."""
        inner = self._inner.copy()
        inner.update(text.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def hexdigest(self, text: str) -> str:
        """The hex HMAC of ``text`` encoded as UTF-8."""
        inner = self._inner.copy()
        inner.update(text.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


class SigningKeys:
    """Signatures with the key derived for each (secret, date), for one region and service::

        keys = SigningKeys("AWS4", "eu-central-1", "s3", "aws4_request")
        keys.signature(secret, "20240501", string_to_sign)  # hex HMAC-SHA256

    The key is ``HMAC(HMAC(HMAC(HMAC(prefix + secret, date), region), service), terminator)``:
    four HMACs the first time a secret signs on a date, a dict lookup after.
    """

    __slots__ = ("_cache", "_prefix", "_steps")

    def __init__(self, prefix: str, region: str, service: str, terminator: str) -> None:
        self._prefix = prefix
        self._steps = (region.encode(), service.encode(), terminator.encode())
        self._cache: dict[tuple[str, str], Hmac] = {}

    def signature(self, secret: str, date: str, string_to_sign: str) -> str:
        """The hex signature of ``string_to_sign`` by ``secret`` on ``date`` (``YYYYMMDD``)."""
        signer = self._cache.get((secret, date))
        if signer is None:
            key = _hmac_digest((self._prefix + secret).encode(), date.encode(), "sha256")
            for step in self._steps:
                key = _hmac_digest(key, step, "sha256")
            signer = Hmac(key)
            if len(self._cache) >= _KEYS_KEPT:
                self._cache.clear()
            self._cache[(secret, date)] = signer
        return signer.hexdigest(string_to_sign)


class SigningTimes:
    """Signing times and lifetimes of V4 URLs, valid until exactly ``expires_at``.

    ``signed_at`` (Unix seconds) is written as the signing time, ``expires_at - signed_at`` as
    the lifetime; ``None`` signs at the current second (direct use, a new URL each second).
    The last signing time's ISO 8601 form is kept, as one expiry window signs many keys.
    """

    __slots__ = ("_last", "max_ttl")

    def __init__(self, max_ttl: int) -> None:
        self.max_ttl = max_ttl
        self._last: tuple[int, str] = (-1, "")

    def resolve(self, expires_at: int, signed_at: int | None) -> tuple[str, int]:
        """``(signing time as 20240501T120000Z, lifetime in seconds)``, or ``SigningError``
        when the lifetime is not within 1 .. ``max_ttl``."""
        if signed_at is None:
            signed_at = int(time.time())
        elif type(signed_at) is not int:
            signed_at = whole_seconds("signed_at", signed_at)
        if type(expires_at) is not int:
            expires_at = whole_seconds("expires_at", expires_at)
        lifetime = expires_at - signed_at
        if not 0 < lifetime <= self.max_ttl:
            raise SigningError(
                f"expires_at={expires_at} is {lifetime} s after the signing time "
                f"signed_at={signed_at}: V4 URLs live 1 .. {self.max_ttl} s; sign with an "
                "expires_at after the signing time and at most max_url_ttl after it"
            )
        last = self._last
        if last[0] == signed_at:
            return last[1], lifetime
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
        self._last = (signed_at, stamp)
        return stamp, lifetime


def whole_seconds(name: str, value: object) -> int:
    """``value`` as an int when it is a whole number of seconds, else ``SigningError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise SigningError(f"{name}={value!r}: expected whole Unix seconds (an int)")
    return int(value)
