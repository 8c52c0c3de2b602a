"""Cache keys: ``<key_prefix>[<namespace>:]<pk>``, collision-free for every primary-key type.

:class:`URLSpec` is what ``install()`` records for one ``ObjectKey`` column of one mapped class:
how a row maps to its cache key, for the read path, the session events and ``CacheService``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["URLSpec", "pk_part"]

_MISSING: Any = object()


def pk_part(values: Sequence[Any]) -> str:
    """Encode a primary key (one value or a composite) for a cache key.

    Ints stay as they are (``file_url:123``, the usual key layout). Other values are
    percent-encoded, so ``:``, ``#`` and ``,`` never appear inside one value; composite keys
    join with ``,``.
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


class URLSpec:
    """One ``ObjectKey`` column of one mapped class, as the hot path needs it.

    >>> spec = urls.url_spec(File)
    >>> spec.column, spec.prefix, spec.key_for(file)
    ('object_key', 'file_url:', 'file_url:123')
    """

    __slots__ = ("attr", "cls", "column", "column_names", "owner", "pk_attrs", "prefix")

    def __init__(
        self,
        cls: type,
        attr: str,
        column: str,
        column_names: frozenset[str],
        pk_attrs: tuple[str, ...],
        prefix: str,
        owner: type,
    ) -> None:
        self.cls = cls
        self.attr = attr
        self.column = column
        self.column_names = column_names
        self.pk_attrs = pk_attrs
        self.prefix = prefix
        self.owner = owner

    def __repr__(self) -> str:
        return f"URLSpec({self.cls.__name__}.{self.attr}, column={self.column!r})"

    def key_for(self, obj: Any) -> str | None:
        """The cache key of ``obj``, or ``None`` while it has no primary key."""
        d = obj.__dict__
        if len(self.pk_attrs) == 1:
            pk = d.get(self.pk_attrs[0], _MISSING)
            if pk is _MISSING:
                pk = getattr(obj, self.pk_attrs[0])
            if pk is None:
                return None
            if type(pk) is int:
                return self.prefix + str(pk)
            return self.prefix + pk_part((pk,))
        values = [getattr(obj, name) for name in self.pk_attrs]
        if any(v is None for v in values):
            return None
        return self.prefix + pk_part(values)

    def key_for_pk(self, pk: Sequence[Any]) -> str:
        """The cache key of the row with primary key ``pk`` (a tuple of its values)."""
        return self.prefix + pk_part(pk)

    def ident(self, key: str | None) -> str:
        """The row id part of ``key``, for log lines (``123`` of ``file_url:123``)."""
        if key is None:
            return "?"
        return key[len(self.prefix) :] if key.startswith(self.prefix) else key
