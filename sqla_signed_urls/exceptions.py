"""One exception hierarchy for the whole library.

Vendor errors (oss2, redis-py) are translated at the boundary with ``raise ... from exc`` so
callers only ever need to catch :class:`SignedURLError`.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "ConfigurationError",
    "SignatureError",
    "SignedURLError",
    "SigningError",
]


class SignedURLError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(SignedURLError, ValueError):
    """A setting is missing or has a value the library cannot work with.

    The message names the setting, the value and what to do about it.
    """


class SigningError(SignedURLError):
    """The signer could not produce a URL for an object key."""


class SignatureError(SignedURLError):
    """A signed URL is malformed, tampered with or expired (see ``LocalSigner.verify``)."""


class CacheError(SignedURLError):
    """The shared cache (Redis) could not be reached or answered wrongly."""
