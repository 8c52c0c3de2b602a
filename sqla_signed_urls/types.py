"""The ``ObjectKey`` column type: marks the column that holds an object-storage key."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from .exceptions import ConfigurationError

__all__ = ["ObjectKey"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]+\Z")


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
        super().__init__(length=length, collation=collation)
        self.length = length
        self.url_attr = url_attr
        self.namespace = namespace
        self.collation = collation

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
