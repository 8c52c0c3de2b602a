"""Cached signed object-storage URLs for SQLAlchemy 2.x models.

::

    from sqla_signed_urls import ObjectKey, SignedURLs
    from sqla_signed_urls.signers import OSSSigner

    class File(Base):
        __tablename__ = "files"
        id: Mapped[int] = mapped_column(primary_key=True)
        object_key: Mapped[str | None] = mapped_column(ObjectKey(512))

    urls = SignedURLs(signer=OSSSigner(bucket), redis="redis://localhost:6379/1")
    urls.install(Base)
    file.url  # signed once, cached in Redis under "file_url:<id>"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import signals
from .config import Settings
from .core import SignedURLs, Stats
from .exceptions import (
    CacheError,
    ConfigurationError,
    SignatureError,
    SignedURLError,
    SigningError,
)
from .types import ObjectKey, Variant

if TYPE_CHECKING:
    from .service import CacheService

__all__ = [
    "CacheError",
    "CacheService",
    "ConfigurationError",
    "ObjectKey",
    "Settings",
    "SignatureError",
    "SignedURLError",
    "SignedURLs",
    "SigningError",
    "Stats",
    "Variant",
    "__version__",
    "signals",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # CacheService pulls in more of SQLAlchemy; load it when first asked for.
    if name == "CacheService":
        from .service import CacheService

        return CacheService
    raise AttributeError(f"module 'sqla_signed_urls' has no attribute {name!r}")
