"""Signers turn an object key and an expiry into a URL.

``Signer`` is the interface. ``S3Signer`` signs SigV4 URLs for AWS S3 and S3-compatible stores
(MinIO, Cloudflare R2, Backblaze B2, Ceph, Wasabi; the ``s3`` extra), ``OSSSigner`` signs for
Aliyun OSS with V1 or V4 credentials (the ``oss`` extra), ``LocalSigner`` with an HMAC secret
of your own (for apps that serve files themselves, and the offline demo). Each module imports
without its driver; building a signer without it raises ``ConfigurationError`` naming the
extra. The V4 signers (S3, OSS V4) sign with their own code, byte for byte what botocore and
oss2 give, and write the signing time ``SignedURLs`` passes, so their URLs are stable.
"""

from __future__ import annotations

from .base import Signer
from .local import LocalSigner
from .oss import OSSSigner
from .s3 import S3Signer

__all__ = ["LocalSigner", "OSSSigner", "S3Signer", "Signer"]
