"""Choosing the signer from the environment: S3 when ``S3_BUCKET`` is set, OSS when
``OSS_BUCKET`` is. ``SignedURLs.from_env()``, the Flask extension and the command line all
choose this way."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..exceptions import ConfigurationError
from .base import Signer

__all__ = ["signer_from_env", "store_in_env"]


def store_in_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``"s3"``, ``"oss"`` or ``None``: which store the environment names (by ``S3_BUCKET``
    or ``OSS_BUCKET``); ``ConfigurationError`` when it names both."""
    env = os.environ if environ is None else environ
    s3, oss = bool(env.get("S3_BUCKET")), bool(env.get("OSS_BUCKET"))
    if s3 and oss:
        raise ConfigurationError(
            "both S3_BUCKET and OSS_BUCKET are set: unset the one you do not sign for, or pass "
            "a signer"
        )
    return "s3" if s3 else "oss" if oss else None


def signer_from_env(environ: Mapping[str, str] | None = None) -> Signer:
    """The signer the environment describes::

        S3_BUCKET=forum AWS_REGION=eu-central-1 ...   -> S3Signer.from_env()
        OSS_BUCKET=forum OSS_ENDPOINT=...             -> OSSSigner.from_env()

    Either one's missing variables raise ``ConfigurationError`` naming them; so does an
    environment that names both stores or neither.
    """
    store = store_in_env(environ)
    if store == "s3":
        from .s3 import S3Signer

        return S3Signer.from_env(environ)
    if store == "oss":
        from .oss import OSSSigner

        return OSSSigner.from_env(environ)
    raise ConfigurationError(
        "no signer: set S3_BUCKET (with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) "
        "for S3, or OSS_BUCKET (with OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_ENDPOINT) "
        "for OSS, or pass a signer (LocalSigner for offline use)"
    )
