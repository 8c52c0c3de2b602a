"""Cache keys: ``<key_prefix>[<namespace>:]<pk>``, collision-free for every primary-key type."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["pk_part"]


def pk_part(values: Sequence[Any]) -> str:
    """Encode a primary key (one value or a composite) for a cache key.

    Ints stay as they are (``file_url:123``, the seed's keys). Other values are percent-encoded,
    so ``:``, ``#`` and ``,`` never appear inside one value; composite keys join with ``,``.
    """
    return ",".join(_one(value) for value in values)


def _one(value: Any) -> str:
    if type(value) is int:
        return str(value)
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, bytes):
        return "b" + value.hex()
    if hasattr(value, "isoformat"):
        return quote(value.isoformat(), safe="")
    return quote(str(value), safe="")
