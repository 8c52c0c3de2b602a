"""What the Flask and the FastAPI forum share: configuration from the environment, the signer
and storage, schema migration, the page queries, the avatar upload and the ``/files`` checks.

Nothing here knows a web framework; ``app.py`` (Flask) and ``asgi.py`` (FastAPI) are thin
layers over it.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Select, func, select
from sqlalchemy.orm import selectinload

from sqla_signed_urls import Settings, SignatureError
from sqla_signed_urls.signers import LocalSigner, OSSSigner, Signer

from .images import identicon_png, sniff_image_type
from .models import Base, File, Post, User
from .storage import LocalStorage, OSSStorage, Storage

__all__ = [
    "ENV_SETTINGS",
    "FileReply",
    "NewAvatar",
    "RedactSignatures",
    "Refused",
    "cache_settings",
    "check_file_request",
    "index_statement",
    "new_avatar",
    "page_files",
    "post_statement",
    "redact_access_logs",
    "signer_and_storage",
    "upgrade_schema",
    "user_posts_statement",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Read from the environment (the apps' own configuration overrides them).
ENV_SETTINGS = (
    "DATABASE_URL",
    "REDIS_URL",
    "ADMIN_TOKEN",
    "FILES_SECRET",
    "FILE_URL_CACHE_TIMEOUT",
    "FILE_URL_CACHE_KEY_PREFIX",
    "FILE_URL_EXPIRES",
    "FILE_URL_LOCAL_CACHE_SIZE",
    "FILE_URL_REDIS_TIMEOUT",
    "OSS_ACCESS_KEY_ID",
    "OSS_ACCESS_KEY_SECRET",
    "OSS_ENDPOINT",
    "OSS_BUCKET",
    "OSS_REGION",
    "OSS_SESSION_TOKEN",
    "INSTANCE_PATH",
    "UPLOAD_DIR",
)
#: Loggers that write request lines (with their query strings) to the console or to disk.
ACCESS_LOGGERS = ("werkzeug", "uvicorn.access", "gunicorn.access")


def env_config() -> dict[str, str | None]:
    """The :data:`ENV_SETTINGS` from the environment (unset or empty: ``None``)."""
    return {name: os.environ.get(name) or None for name in ENV_SETTINGS}


def cache_settings(config: Mapping[str, Any]) -> tuple[Settings, str | None]:
    """The ``FILE_URL_*`` settings and ``REDIS_URL`` of an app's configuration."""
    return Settings.from_mapping(
        {
            k: v
            for k, v in config.items()
            if isinstance(k, str) and k.startswith(("FILE_URL_", "REDIS_URL"))
        }
    )


# -- signer, storage, schema -----------------------------------------------------------------


def signer_and_storage(config: Mapping[str, Any], instance_path: Path) -> tuple[Signer, Storage]:
    """OSS when any ``OSS_*`` setting is given, else ``LocalSigner`` over files in
    ``UPLOAD_DIR`` (default ``<instance>/uploads``) with ``FILES_SECRET``."""
    oss_env = {k: v for k, v in config.items() if isinstance(k, str) and k.startswith("OSS_") and v}
    if oss_env:
        signer = OSSSigner.from_env(oss_env)
        return signer, OSSStorage(signer.bucket)
    secret = config.get("FILES_SECRET") or instance_secret(instance_path)
    upload_dir = config.get("UPLOAD_DIR") or instance_path / "uploads"
    return LocalSigner(secret, base_url="/files"), LocalStorage(upload_dir)


def instance_secret(instance_path: Path) -> str:
    """A secret kept in ``<instance>/files_secret``, so signed URLs survive restarts."""
    path = instance_path / "files_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def upgrade_schema(connection: Connection) -> None:
    """Bring the schema up to date with the alembic migrations of this example
    (``migrations/`` at the repository root); without alembic, create the tables directly.

    Async apps run it with ``await connection.run_sync(upgrade_schema)``.
    """
    ini = REPO_ROOT / "alembic.ini"
    try:
        from alembic import command
        from alembic.config import Config
    except ImportError:
        Base.metadata.create_all(connection)
        return
    if not ini.exists():
        Base.metadata.create_all(connection)
        return
    cfg = Config(str(ini))
    cfg.attributes["configure_logger"] = False
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def count_users() -> Select[tuple[int]]:
    return select(func.count()).select_from(User)


# -- pages -----------------------------------------------------------------------------------


def index_statement(page: int, per_page: int) -> Select[tuple[Post]]:
    """One page of the post list, newest first, with authors, avatars and files loaded."""
    return (
        select(Post)
        .options(selectinload(Post.author).selectinload(User.avatar), selectinload(Post.files))
        .order_by(Post.created_at.desc(), Post.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )


def count_posts() -> Select[tuple[int]]:
    return select(func.count()).select_from(Post)


def post_statement(post_id: int) -> Select[tuple[Post]]:
    """One post with its author, the author's avatar and its files."""
    return (
        select(Post)
        .where(Post.id == post_id)
        .options(selectinload(Post.author).selectinload(User.avatar), selectinload(Post.files))
    )


def user_statement(user_id: int) -> Select[tuple[User]]:
    return select(User).where(User.id == user_id).options(selectinload(User.avatar))


def user_posts_statement(user_id: int) -> Select[tuple[Post]]:
    """A user's posts, newest first, with their files loaded."""
    return (
        select(Post)
        .where(Post.author_id == user_id)
        .options(selectinload(Post.files))
        .order_by(Post.created_at.desc())
    )


def page_files(posts: Iterable[Post], avatars_of: Iterable[User]) -> list[File]:
    """Every file a page shows, once each: the avatars of ``avatars_of`` and the posts' files."""
    found = {user.avatar.id: user.avatar for user in avatars_of if user.avatar is not None}
    found.update((f.id, f) for post in posts for f in post.files)
    return list(found.values())


# -- avatar upload ---------------------------------------------------------------------------


class Refused(Exception):
    """A request the app answers with an HTTP error status."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(reason or str(status))
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class NewAvatar:
    """An uploaded (or drawn) avatar image, stored under a fresh object key."""

    key: str
    data: bytes
    content_type: str
    extension: str

    def apply(self, user: User) -> tuple[File | None, str | None]:
        """Point ``user``'s avatar at this image: ``(new File to add or None, old key)``.

        The ``File`` row keeps its id; its object key changes, so the commit invalidates
        ``file_url:<id>`` and every page shows the new image under a new signed URL.
        """
        avatar, old_key, added = user.avatar, None, None
        if avatar is None:
            avatar = added = File(file_type="avatar", owner_id=user.id)
        else:
            old_key = avatar.object_key
        avatar.object_key = self.key
        avatar.filename = f"avatar{self.extension}"
        avatar.content_type = self.content_type
        avatar.size = len(self.data)
        return added, old_key


def new_avatar(user_id: int, upload: bytes | None, storage: Storage) -> NewAvatar:
    """Store an uploaded image (or, without one, a freshly drawn identicon) as a user's new
    avatar. Raises :class:`Refused` (400) for anything but PNG, JPEG, GIF or WebP."""
    if upload:
        content_type = sniff_image_type(upload)
        if content_type is None:
            raise Refused(400, "upload a PNG, JPEG, GIF or WebP image")
        data = upload
    else:
        data, content_type = identicon_png(secrets.randbits(32)), "image/png"
    extension = mimetypes.guess_extension(content_type) or ".img"
    key = f"avatars/{user_id}/{secrets.token_hex(6)}{extension}"
    storage.put(key, data, content_type)
    return NewAvatar(key, data, content_type, extension)


# -- /files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileReply:
    """The body and headers of a ``/files/...`` answer."""

    data: bytes
    headers: dict[str, str]


def check_file_request(
    signer: LocalSigner, storage: Storage, signed: str, *, now: float | None = None
) -> FileReply:
    """Check a ``LocalSigner`` URL as the browser sent it (quoted path and query string) and
    read the object. Raises :class:`Refused` 403 unless the signature checks out, 404 when
    the object is missing.

    The URL changes whenever the file does, so browsers may keep the response for as long as
    the URL stays valid.
    """
    try:
        object_key = signer.verify(signed)
    except SignatureError:
        raise Refused(403) from None
    data = storage.get(object_key)
    if data is None:
        raise Refused(404)
    content_type = mimetypes.guess_type(object_key)[0] or "application/octet-stream"
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    expires = re.search(r"[?&]expires=(\d+)", signed)
    now = time.time() if now is None else now
    remaining = max(0, int(expires.group(1)) - int(now)) if expires else 0
    return FileReply(
        data,
        {
            "Content-Type": content_type,
            "Cache-Control": f"private, max-age={remaining}, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )


# -- logs ------------------------------------------------------------------------------------


class RedactSignatures(logging.Filter):
    """Blanks URL signatures and tokens in log lines: a signed URL is a bearer credential.

    Web servers log every request line, ``/files/...?signature=...`` included; the apps put
    this filter on the access loggers (:data:`ACCESS_LOGGERS`)::

        logging.getLogger("uvicorn.access").addFilter(RedactSignatures())
    """

    #: Signatures (``signature``, ``x-oss-signature``, ``X-Amz-Signature``) and the session
    #: tokens some URLs carry (``security-token``, ``X-Amz-Security-Token``).
    PATTERN = re.compile(r"(?i)([?&](?:x-(?:oss|amz)-)?(?:signature|security-token)=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1<redacted>", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.PATTERN.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def redact_access_logs() -> None:
    """Put :class:`RedactSignatures` on every access logger (once)."""
    for name in ACCESS_LOGGERS:
        access_log = logging.getLogger(name)
        if not any(isinstance(f, RedactSignatures) for f in access_log.filters):
            access_log.addFilter(RedactSignatures())
