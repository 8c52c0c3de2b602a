"""The Campus Forum example: a forum whose file URLs are signed and cached by sqla_signed_urls,
as a Flask app (``app.py``) and as a FastAPI app on ``AsyncSession`` (``asgi.py``).

Run either on embedded defaults (SQLite in ``instance/``, an in-process Redis, ``LocalSigner``)::

    flask --app examples.campus_forum run
    uvicorn --factory examples.campus_forum.asgi:create_app

They fill an empty database with demo data on first start, once however many workers start
together. ``DATABASE_URL``, ``REDIS_URL``, ``ADMIN_TOKEN`` and the ``OSS_*`` variables switch
them to real servers; see ``docs/example-and-migrations.md``. Under gunicorn or uvicorn with
several workers (``python -m examples.campus_forum prepare`` migrates ahead of time, and
``gunicorn_conf.py`` keeps signatures out of the logs): ``docs/deployment.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Forum, create_app

__all__ = ["Forum", "create_app"]


def __getattr__(name: str) -> Any:
    # The Flask app is imported on first use, so the FastAPI app runs without Flask.
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
