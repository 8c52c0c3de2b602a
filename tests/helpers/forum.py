"""The Campus Forum example's configuration in tests: isolated from the environment, files under
``tmp_path``, and for the async app a database of its own (aiosqlite in ``tmp_path``, or a
PostgreSQL schema on ``DATABASE_URL`` that the app reaches through asyncpg)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

DATABASE_URL = os.environ.get("DATABASE_URL") or None
SECRET = "test-files-secret-0123456789abcdef"
#: Settings from the environment that would change what the tests run against.
ISOLATE = {
    "ADMIN_TOKEN": None,
    "OSS_ACCESS_KEY_ID": None,
    "OSS_ACCESS_KEY_SECRET": None,
    "OSS_ENDPOINT": None,
    "OSS_BUCKET": None,
    "OSS_REGION": None,
    "OSS_SESSION_TOKEN": None,
}


@contextmanager
def forum_database(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``DATABASE_URL`` and ``ENGINE_OPTIONS`` for the app: a SQLite file, or a PostgreSQL
    schema created for the test and dropped afterwards (the app itself runs on asyncpg)."""
    if not DATABASE_URL:
        yield {"DATABASE_URL": f"sqlite:///{tmp_path / 'forum.db'}", "ENGINE_OPTIONS": {}}
        return
    schema = f"t_forum_{uuid.uuid4().hex[:10]}"
    admin = create_engine(DATABASE_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield {
            "DATABASE_URL": DATABASE_URL,
            "ENGINE_OPTIONS": {"connect_args": {"server_settings": {"search_path": schema}}},
        }
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def forum_config(tmp_path: Path, database: dict[str, Any], **config: Any) -> dict[str, Any]:
    """The app's configuration: isolated from the environment, files under ``tmp_path``."""
    return {
        **ISOLATE,
        **database,
        "REDIS_URL": None,
        "FILES_SECRET": SECRET,
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "INSTANCE_PATH": str(tmp_path / "instance"),
        **config,
    }
