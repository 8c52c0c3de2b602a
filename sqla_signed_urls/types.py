"""The ``ObjectKey`` column type: marks the column that holds an object-storage key."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from .exceptions import ConfigurationError

__all__ = ["ObjectKey", "Variant"]

#: Where a URL's download name (or content type) comes from: the name of another attribute of
#: the row, or a callable given the row.
Source = str | Callable[[Any], str | None]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]+\Z")


class Variant:
    """Another URL of the same object: an image variant (a thumbnail, a resized copy).

    Either ``params``, query parameters signed into the URL for a store or image proxy that
    processes the object on the fly (OSS: ``{"x-oss-process": "image/resize,w_128"}``), or
    ``key``, which gives the object key of a pre-generated copy from the original's::

        object_key: Mapped[str | None] = mapped_column(ObjectKey(512, variants={
            "thumb": Variant(params={"x-oss-process": "image/resize,w_128"}),
            "small": Variant(key=lambda key: f"thumbs/{key}"),
        }))
        # file.thumb_url, file.small_url; urls.url_for(file, variant="thumb")

    Each variant is cached under ``<key_prefix><pk>:<name>``, checked like the base URL, and
    invalidated with it. ``attr`` names its attribute (default ``<name>_url``).
    """

    __slots__ = ("attr", "key", "params")

    def __init__(
        self,
        *,
        params: Mapping[str, str] | None = None,
        key: Callable[[str], str] | None = None,
        attr: str | None = None,
    ) -> None:
        if (params is None) == (key is None):
            raise ConfigurationError(
                "Variant(...): give exactly one of params={...} (signed query parameters) or "
                "key=callable (the object key of a pre-generated copy)"
            )
        if params is not None and (
            not params
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
        ):
            raise ConfigurationError(
                f"Variant(params={params!r}): expected a non-empty mapping of str to str"
            )
        if key is not None and not callable(key):
            raise ConfigurationError(f"Variant(key={key!r}): expected a callable")
        if attr is not None and (not isinstance(attr, str) or not _IDENTIFIER.match(attr)):
            raise ConfigurationError(f"Variant(attr={attr!r}): attr must be a Python identifier")
        self.params: tuple[tuple[str, str], ...] = tuple(params.items()) if params else ()
        self.key = key
        self.attr = attr

    def __repr__(self) -> str:
        what = f"params={dict(self.params)!r}" if self.params else f"key={self.key!r}"
        return f"Variant({what})"


class ObjectKey(TypeDecorator[str]):
    """A ``String`` column holding an object key; gives its class a signed-URL attribute.

    Once :meth:`SignedURLs.install` covers the class, reading ``obj.<url_attr>`` returns a
    cached signed URL for the key (``None`` when the key is ``None`` or empty)::

        class File(Base):
            __tablename__ = "files"
            id: Mapped[int] = mapped_column(primary_key=True)
            object_key: Mapped[str | None] = mapped_column(ObjectKey(512))  # File.url
            thumb_key: Mapped[str | None] = mapped_column(ObjectKey(512, url_attr="thumb_url"))

    ``namespace`` gives the column a key scheme of its own: its URLs are cached under
    ``<key_prefix><namespace>:<pk>`` instead of ``<key_prefix><pk>``. It defaults to nothing for
    ``url_attr="url"`` and to ``url_attr`` otherwise, so a second URL column on one class never
    collides with the first.

    ``download_name`` names another attribute (or a callable given the row) holding the file's
    name: its URLs then make the browser download it under that name
    (``response-content-disposition``, RFC 6266, with ``filename*`` for non-ASCII names;
    ``disposition="inline"`` shows it instead). ``content_type`` does the same for the
    ``Content-Type`` the store answers with. A commit that changes either attribute
    invalidates the URL. ``variants`` declares :class:`Variant` URLs of the same object.
    These options shape URLs only, never the database column.
    """

    impl = String
    cache_ok = True

    def __init__(
        self,
        length: int | None = None,
        *,
        url_attr: str = "url",
        namespace: str | None = None,
        collation: str | None = None,
        download_name: Source | None = None,
        content_type: Source | None = None,
        disposition: str = "attachment",
        variants: Mapping[str, Variant] | None = None,
    ) -> None:
        if length is not None and (not isinstance(length, int) or length <= 0):
            raise ConfigurationError(
                f"ObjectKey(length={length!r}): length must be a positive int or None"
            )
        if not isinstance(url_attr, str) or not _IDENTIFIER.match(url_attr):
            raise ConfigurationError(
                f"ObjectKey(url_attr={url_attr!r}): url_attr must be a Python identifier"
            )
        if namespace is not None and (
            not isinstance(namespace, str) or not _NAMESPACE.match(namespace)
        ):
            raise ConfigurationError(
                f"ObjectKey(namespace={namespace!r}): use letters, digits, '_', '.' or '-'"
            )
        for option, source in (("download_name", download_name), ("content_type", content_type)):
            if source is not None and not (
                callable(source) or (isinstance(source, str) and _IDENTIFIER.match(source))
            ):
                raise ConfigurationError(
                    f"ObjectKey({option}={source!r}): name another attribute of the row, "
                    "or give a callable that takes the row"
                )
        if disposition not in ("attachment", "inline"):
            raise ConfigurationError(
                f"ObjectKey(disposition={disposition!r}): expected 'attachment' or 'inline'"
            )
        for name, variant in (variants or {}).items():
            if not isinstance(name, str) or not _NAMESPACE.match(name):
                raise ConfigurationError(
                    f"ObjectKey(variants={{{name!r}: ...}}): name variants with letters, "
                    "digits, '_', '.' or '-'"
                )
            if not isinstance(variant, Variant):
                raise ConfigurationError(
                    f"ObjectKey(variants={{{name!r}: {variant!r}}}): expected a Variant"
                )
        super().__init__(length=length, collation=collation)
        self.length = length
        self.url_attr = url_attr
        self.namespace = namespace
        self.collation = collation
        self.download_name = download_name
        self.content_type = content_type
        self.disposition = disposition
        # A tuple, not a dict: SQLAlchemy builds statement cache keys from these attributes.
        self.variants: tuple[tuple[str, Variant], ...] = tuple((variants or {}).items())

    @property
    def key_namespace(self) -> str | None:
        """The namespace actually used in cache keys (see the class docstring)."""
        if self.namespace is not None:
            return self.namespace
        return None if self.url_attr == "url" else self.url_attr

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        raise TypeError(f"ObjectKey columns hold str or None, got {type(value).__name__}")

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return value  # type: ignore[no-any-return]

    def copy(self, **kw: Any) -> ObjectKey:
        return ObjectKey(
            self.length,
            url_attr=self.url_attr,
            namespace=self.namespace,
            collation=self.collation,
            download_name=self.download_name,
            content_type=self.content_type,
            disposition=self.disposition,
            variants=dict(self.variants),
        )

    def __repr__(self) -> str:
        args = []
        if self.length is not None:
            args.append(f"length={self.length!r}")
        if self.url_attr != "url":
            args.append(f"url_attr={self.url_attr!r}")
        if self.namespace is not None:
            args.append(f"namespace={self.namespace!r}")
        if self.collation is not None:
            args.append(f"collation={self.collation!r}")
        return f"ObjectKey({', '.join(args)})"
