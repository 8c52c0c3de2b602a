"""Cache keys: ``<key_prefix>[<namespace>:]<pk>``, collision-free for every primary-key type.

:class:`URLSpec` is what ``install()`` records for one ``ObjectKey`` column of one mapped class:
how a row maps to its cache key, for the read path, the session events and ``CacheService``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

__all__ = [
    "Shape",
    "URLSpec",
    "bare_key",
    "content_disposition",
    "pk_part",
    "split_match_key",
]

#: Separates the object key from the URL's extra parameters in a match key. No object key
#: holds it (S3 and OSS keys travel in XML, which cannot carry NUL; LocalSigner refuses it).
EXTRAS = "\x00"

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


def content_disposition(name: str, disposition: str = "attachment") -> str:
    """A ``Content-Disposition`` value that names a download (RFC 6266): ``filename`` for
    every browser (non-ASCII characters, quotes and backslashes replaced), and RFC 5987
    ``filename*`` with the exact name when it is not plain ASCII.

    >>> content_disposition("report.pdf")
    'attachment; filename="report.pdf"'
    >>> content_disposition("日本 語.pdf")
    "attachment; filename=\"__ _.pdf\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%20%E8%AA%9E.pdf"
    """
    cleaned = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in name)
    value = f'{disposition}; filename="{cleaned}"'
    if cleaned != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def bare_key(match_key: str) -> str:
    """The object key of a match key (what a signer's URL prefixes are made of)."""
    return match_key.partition(EXTRAS)[0]


def split_match_key(match_key: str) -> tuple[str, list[tuple[str, str]]]:
    """``(object_key, extra query parameters)`` of a match key made by :meth:`URLSpec.match_key`."""
    object_key, _, extra = match_key.partition(EXTRAS)
    return object_key, parse_qsl(extra, keep_blank_values=True) if extra else []


def _read(obj: Any, source: str | Callable[[Any], str | None]) -> str | None:
    value = source(obj) if callable(source) else getattr(obj, source)
    return value if isinstance(value, str) and value else None


class Shape:
    """What a URL carries besides its object key: another object key (a variant's
    ``key``), signed query parameters (a variant's ``params``), and the response headers
    named by ``download_name`` / ``content_type``."""

    __slots__ = ("disposition", "key_map", "name_source", "params", "type_source")

    def __init__(
        self,
        *,
        key_map: Callable[[str], str] | None = None,
        params: tuple[tuple[str, str], ...] = (),
        name_source: str | Callable[[Any], str | None] | None = None,
        type_source: str | Callable[[Any], str | None] | None = None,
        disposition: str = "attachment",
    ) -> None:
        self.key_map = key_map
        self.params = params
        self.name_source = name_source
        self.type_source = type_source
        self.disposition = disposition


class URLSpec:
    """One ``ObjectKey`` column of one mapped class, as the hot path needs it.

    >>> spec = urls.url_spec(File)
    >>> spec.column, spec.prefix, spec.key_for(file)
    ('object_key', 'file_url:', 'file_url:123')
    """

    __slots__ = (
        "attr",
        "cls",
        "column",
        "column_names",
        "owner",
        "pk_attrs",
        "prefix",
        "shape",
        "suffix",
        "variant",
        "watch",
    )

    def __init__(
        self,
        cls: type,
        attr: str,
        column: str,
        column_names: frozenset[str],
        pk_attrs: tuple[str, ...],
        prefix: str,
        owner: type,
        *,
        variant: str | None = None,
        shape: Shape | None = None,
        watch: tuple[str, ...] = (),
    ) -> None:
        self.cls = cls
        self.attr = attr
        self.column = column
        self.column_names = column_names
        self.pk_attrs = pk_attrs
        self.prefix = prefix
        self.owner = owner
        #: The variant's name (``None`` for the column's own URL); its keys end ``:<name>``.
        self.variant = variant
        self.suffix = f":{variant}" if variant else ""
        #: What the URL carries besides the object key (``None``: nothing).
        self.shape = shape
        #: Attributes besides the column and the primary key whose change invalidates.
        self.watch = watch

    def match_key(self, obj: Any, object_key: str) -> str | None:
        """What a cached value for ``obj`` is checked against and signed from: the object key
        (a variant's own), followed by the URL's extra parameters when it has any. ``None``
        when a variant's ``key`` or a name callable fails (the URL cannot be made)."""
        shape = self.shape
        if shape is None:
            return object_key
        try:
            key = shape.key_map(object_key) if shape.key_map is not None else object_key
            pairs: list[tuple[str, str]] = []
            if shape.name_source is not None:
                name = _read(obj, shape.name_source)
                if name:
                    header = content_disposition(name, shape.disposition)
                    pairs.append(("response-content-disposition", header))
            if shape.type_source is not None:
                content_type = _read(obj, shape.type_source)
                if content_type:
                    pairs.append(("response-content-type", content_type))
        except Exception:
            return None
        if not isinstance(key, str) or not key or EXTRAS in key:
            return None
        pairs.extend(shape.params)
        return f"{key}{EXTRAS}{urlencode(pairs)}" if pairs else key

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
                return self.prefix + str(pk) + self.suffix
            return self.prefix + pk_part((pk,)) + self.suffix
        values = [getattr(obj, name) for name in self.pk_attrs]
        if any(v is None for v in values):
            return None
        return self.prefix + pk_part(values) + self.suffix

    def key_for_pk(self, pk: Sequence[Any]) -> str:
        """The cache key of the row with primary key ``pk`` (a tuple of its values)."""
        return self.prefix + pk_part(pk) + self.suffix

    def ident(self, key: str | None) -> str:
        """The row id part of ``key``, for log lines (``123`` of ``file_url:123``)."""
        if key is None:
            return "?"
        return key[len(self.prefix) :] if key.startswith(self.prefix) else key
