"""Alembic autogenerate support: render ``ObjectKey`` columns so revisions import and rebuild them.

Without this hook alembic writes ``sqla_signed_urls.types.ObjectKey(length=512)`` into the
revision without importing anything, and the revision fails to load. Hand the hook to
``context.configure`` in your ``env.py``::

    from sqla_signed_urls.alembic import render_item

    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_item=render_item,
    )

A generated revision then reads ``sa.Column("object_key", sqla_signed_urls.ObjectKey(length=512))``
and has ``import sqla_signed_urls`` at the top. Every argument that differs from its default
(``length``, ``url_attr``, ``namespace``, ``collation``) is written out, so the column in the
revision is the column in the model.

If you already have a ``render_item`` of your own, call :func:`render_object_key` from it::

    def render_item(type_, obj, autogen_context):
        if type_ == "type" and isinstance(obj, ObjectKey):
            return render_object_key(obj, autogen_context)
        ...  # your own cases
        return False
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from .types import ObjectKey

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext

__all__ = ["render_item", "render_object_key"]

#: The import a revision needs for what :func:`render_object_key` writes.
IMPORT = "import sqla_signed_urls"


def render_object_key(key_type: ObjectKey, autogen_context: AutogenContext | None = None) -> str:
    """Python source that rebuilds ``key_type``; adds the import to the revision being written.

    >>> render_object_key(ObjectKey(512, url_attr="thumb_url"))
    "sqla_signed_urls.ObjectKey(length=512, url_attr='thumb_url')"
    """
    if autogen_context is not None and autogen_context.imports is not None:
        autogen_context.imports.add(IMPORT)
    return f"sqla_signed_urls.{key_type!r}"  # ObjectKey's repr spells out its arguments


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """``render_item`` hook for ``context.configure``: renders ``ObjectKey``, defers the rest.

    Returning ``False`` tells alembic to render everything else its usual way.
    """
    if type_ == "type" and isinstance(obj, ObjectKey):
        return render_object_key(obj, autogen_context)
    return False
