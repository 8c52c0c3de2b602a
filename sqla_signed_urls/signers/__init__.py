"""Signers turn an object key and an expiry into a URL.

``Signer`` is the interface; ``OSSSigner`` signs with oss2 (the ``oss`` extra; importable without
it, it raises ``ConfigurationError`` naming the extra when built), ``LocalSigner`` with an HMAC
secret of your own (for apps that serve files themselves, and the offline demo).
"""

from __future__ import annotations

from .base import Signer
from .local import LocalSigner
from .oss import OSSSigner

__all__ = ["LocalSigner", "OSSSigner", "Signer"]
