"""The Campus Forum example: a Flask app whose file URLs are signed and cached by
sqla_signed_urls.

Run it on embedded defaults (SQLite in ``instance/``, an in-process Redis, ``LocalSigner``)::

    flask --app examples.campus_forum run

It fills an empty database with demo data on first start. ``DATABASE_URL``, ``REDIS_URL``,
``ADMIN_TOKEN`` and the ``OSS_*`` variables switch it to real servers; see
``docs/example-and-migrations.md``.
"""

from __future__ import annotations

from .app import Forum, create_app

__all__ = ["Forum", "create_app"]
