"""What the Flask and the FastAPI forum share: configuration from the environment, the signer
and storage, preparing the database (migrations and demo data, once however many workers start
together), fork safety, the page queries, the avatar upload, the ``/files`` checks and the
redaction of signatures in server logs.

Nothing here knows a web framework; ``app.py`` (Flask) and ``asgi.py`` (FastAPI) are thin
layers over it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mimetypes
import os
import re
import secrets
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Select, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, selectinload

from sqla_signed_urls import Settings, SignatureError, SignedURLs
from sqla_signed_urls.signers import LocalSigner, OSSSigner, Signer

from .demo_data import DEMO_POSTS, load_demo_data
from .images import identicon_png, sniff_image_type
from .models import File, Post, User
from .storage import LocalStorage, OSSStorage, Storage

__all__ = [
    "DEFAULTS",
    "ENV_SETTINGS",
    "FileReply",
    "NewAvatar",
    "Prepared",
    "RedactSignatures",
    "Refused",
    "cache_settings",
    "check_file_request",
    "database_url",
    "dispose_after_fork",
    "health",
    "index_statement",
    "instance_path",
    "new_avatar",
    "page_urls",
    "post_file_statement",
    "post_statement",
    "prepare_database",
    "redact",
    "redact_access_logs",
    "settings",
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
    "AUTO_MIGRATE",
    "LOAD_DEMO_DATA",
    "DEMO_POSTS",
)
#: What the apps use where neither the environment nor their configuration says otherwise.
DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(ENV_SETTINGS),
    "AUTO_MIGRATE": True,
    "LOAD_DEMO_DATA": True,
    "DEMO_POSTS": DEMO_POSTS,
    "POSTS_PER_PAGE": 10,
    "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
}
#: Loggers whose lines may hold request URLs with their query strings: the web servers' access
#: logs, and their error logs (gunicorn names the request of a failed response).
ACCESS_LOGGERS = (
    "werkzeug",
    "uvicorn.access",
    "uvicorn.error",
    "gunicorn.access",
    "gunicorn.error",
)
#: Key of the PostgreSQL advisory lock that lets one process at a time prepare the database.
PREPARE_LOCK_KEY = 0x63616D7075735F66  # "campus_f"
_ON = {"1", "true", "yes", "on"}
_OFF = {"0", "false", "no", "off"}


def env_config() -> dict[str, str]:
    """The :data:`ENV_SETTINGS` that are set, and not empty, in the environment."""
    return {name: value for name in ENV_SETTINGS if (value := os.environ.get(name))}


def settings(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An app's settings: :data:`DEFAULTS`, overridden by the environment, overridden by
    ``config``. Switches and numbers may be given as text (``AUTO_MIGRATE=0``,
    ``DEMO_POSTS=200``); a value that is neither raises ``ValueError`` naming the setting."""
    merged = {**DEFAULTS, **env_config(), **(config or {})}
    for name in ("AUTO_MIGRATE", "LOAD_DEMO_DATA"):
        merged[name] = _switch(name, merged[name])
    merged["DEMO_POSTS"] = _count("DEMO_POSTS", merged["DEMO_POSTS"])
    return merged


def _switch(name: str, value: Any) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in _ON:
            return True
        if value.strip().lower() in _OFF:
            return False
        raise ValueError(f"{name}={value!r}: expected 1 or 0 (true/false, yes/no, on/off)")
    return bool(value)


def _count(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a whole number") from None
    if number < 0:
        raise ValueError(f"{name}={value!r}: expected 0 or more")
    return number


def instance_path(config: Mapping[str, Any]) -> Path:
    """``INSTANCE_PATH`` as an absolute path; by default ``instance/`` in the checkout."""
    given = config.get("INSTANCE_PATH")
    return Path(given).expanduser().resolve() if given else REPO_ROOT / "instance"


def database_url(config: Mapping[str, Any], instance: Path) -> str:
    """``DATABASE_URL``, or SQLite in ``<instance>/campus_forum.db`` (directory created)."""
    url: str | None = config.get("DATABASE_URL")
    if url:
        return url
    instance.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{instance / 'campus_forum.db'}"


def sync_database_url(url: str) -> str:
    """``url`` with a sync driver (``postgresql+asyncpg`` becomes ``postgresql+psycopg``,
    ``sqlite+aiosqlite`` becomes ``sqlite``), for commands that run outside an event loop."""
    parsed = make_url(url)
    drivers = {"postgresql+asyncpg": "postgresql+psycopg", "sqlite+aiosqlite": "sqlite"}
    driver = drivers.get(parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(False) if driver else url


def cache_settings(config: Mapping[str, Any]) -> tuple[Settings, str | None]:
    """The ``FILE_URL_*`` settings and ``REDIS_URL`` of an app's configuration."""
    return Settings.from_mapping(
        {
            k: v
            for k, v in config.items()
            if isinstance(k, str) and k.startswith(("FILE_URL_", "REDIS_URL"))
        }
    )


# -- signer, storage, secret -----------------------------------------------------------------


def signer_and_storage(config: Mapping[str, Any], instance_path: Path) -> tuple[Signer, Storage]:
    """OSS when any ``OSS_*`` setting is given, else ``LocalSigner`` over files in
    ``UPLOAD_DIR`` (default ``<instance>/uploads``) with ``FILES_SECRET``. (``LocalSigner``'s
    name carries a fingerprint of the secret, so after ``FILES_SECRET`` changes, cached URLs
    signed with the old one are signed again instead of served.)
    """
    oss_env = {k: v for k, v in config.items() if isinstance(k, str) and k.startswith("OSS_") and v}
    if oss_env:
        signer = OSSSigner.from_env(oss_env)
        return signer, OSSStorage(signer.bucket)
    secret = config.get("FILES_SECRET") or instance_secret(instance_path)
    upload_dir = config.get("UPLOAD_DIR") or instance_path / "uploads"
    return LocalSigner(secret, base_url="/files"), LocalStorage(upload_dir)


def instance_secret(instance_path: Path) -> str:
    """A secret kept in ``<instance>/files_secret``, so signed URLs survive restarts.

    Workers that start together agree on it: each writes a candidate to a private temporary
    file and links it into place, which only one of them can do; the file is complete before
    anyone can read it, and everyone reads the one that got there first.
    """
    path = instance_path / "files_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, candidate = tempfile.mkstemp(dir=path.parent, prefix=".files_secret-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(candidate, path)
        except OSError as exc:
            raise RuntimeError(
                f"cannot create {path} ({exc.strerror}); set FILES_SECRET instead"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(candidate)
    secret = path.read_text().strip()
    if not secret:
        raise RuntimeError(f"{path} is empty: delete it (a new secret is made) or set FILES_SECRET")
    return secret


# -- preparing the database ------------------------------------------------------------------


def upgrade_schema(connection: Connection) -> None:
    """Bring the schema up to date with the alembic migrations of this example
    (``migrations/`` at the repository root). Needs alembic (the ``example`` extra).

    Async apps run it with ``await connection.run_sync(upgrade_schema)``.
    """
    ini = REPO_ROOT / "alembic.ini"
    try:
        from alembic import command
        from alembic.config import Config
    except ImportError:
        raise RuntimeError(
            "the Campus Forum migrates its database with alembic, which is not installed: "
            "pip install -e '.[example]'"
        ) from None
    cfg = Config(str(ini))
    cfg.attributes["configure_logger"] = False
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare_database` did."""

    #: The schema was brought up to date.
    migrated: bool
    #: Demo data was loaded now (not asked for, or the forum already had users: False).
    demo_loaded: bool


def prepare_database(
    connection: Connection,
    storage: Storage,
    *,
    migrate: bool = True,
    demo_posts: int | None = None,
) -> Prepared:
    """Migrate the schema and, when ``demo_posts`` is given and the forum has no users, load
    that many posts of demo data: in one transaction, one process at a time.

    Any number of workers may call it at once on an empty database: on PostgreSQL the
    transaction starts by taking an advisory lock (``pg_advisory_xact_lock``), on a SQLite
    file an exclusive lock on ``<database>.lock`` is held until the commit; whoever comes next
    finds the schema at head and the users there, and does nothing. ``connection`` must not
    be in a transaction; async apps call
    ``await connection.run_sync(prepare_database, storage, ...)``.
    """
    loaded = False
    with _file_lock(_sqlite_lock_path(connection)), connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(PREPARE_LOCK_KEY)))
        if migrate:
            upgrade_schema(connection)
        if demo_posts is not None:
            # Joins the transaction: its commit() flushes, the commit above makes it final.
            with Session(bind=connection) as session:
                if not session.scalar(count_users()):
                    load_demo_data(session, storage, posts=demo_posts)
                    loaded = True
    return Prepared(migrate, loaded)


def _sqlite_lock_path(connection: Connection) -> Path | None:
    url = connection.engine.url
    database = url.database
    if url.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return None
    if database.startswith("file:"):  # a URI filename: no lock file beside it
        return None
    return Path(database + ".lock")


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (nothing without a path, or without ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # Windows: one process at a time is up to the user
        path = None
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- fork safety -----------------------------------------------------------------------------

_forked_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()
_fork_hook_registered = False


def dispose_after_fork(engine: Engine) -> None:
    """Give a forked child a fresh connection pool for ``engine``.

    ``gunicorn --preload`` builds the app, and so uses its engine, in the master process and
    then forks the workers: a pooled connection copied into several processes is one socket
    shared by all of them. In each child this runs ``engine.dispose(close=False)``, the way
    SQLAlchemy documents for multiprocessing: the child forgets the inherited connections
    without closing them (they still belong to the parent) and opens its own. For an
    ``AsyncEngine``, pass ``engine.sync_engine``.
    """
    global _fork_hook_registered
    with _fork_hook_lock:
        if not _fork_hook_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_dispose_in_child)
            _fork_hook_registered = True
        _forked_engines.add(engine)


def _dispose_in_child() -> None:
    for engine in list(_forked_engines):
        engine.dispose(close=False)


# -- health ----------------------------------------------------------------------------------


def health(database_ok: bool, redis_available: bool) -> tuple[int, dict[str, str]]:
    """The status and body of ``/healthz``: 503 when the database does not answer. Redis
    being down does not fail it: pages keep working, with URLs signed directly."""
    body = {
        "status": "ok" if database_ok else "unavailable",
        "database": "ok" if database_ok else "unavailable",
        "redis": "ok" if redis_available else "unavailable: signing directly",
    }
    return (200 if database_ok else 503), body


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


def post_file_statement(post_id: int, file_id: int) -> Select[tuple[File]]:
    """One of a post's images or attachments (never an avatar)."""
    return select(File).where(
        File.id == file_id, File.post_id == post_id, File.file_type != "avatar"
    )


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
    the object is missing, 400 for an image operation this app does not do.

    The URL's signed parameters say how to answer: ``response-content-disposition`` and
    ``response-content-type`` become those headers (attachments download under their name),
    and ``x-oss-process=image/resize,w_<n>`` (the ``thumb`` variant) returns the image scaled
    to ``n`` pixels wide, as OSS does. The URL changes whenever the file does, so browsers may
    keep the response for as long as the URL stays valid.
    """
    try:
        found = signer.verified(signed)
    except SignatureError:
        raise Refused(403) from None
    data = storage.get(found.object_key)
    if data is None:
        raise Refused(404)
    params = found.params
    content_type = (
        params.get("response-content-type")
        or mimetypes.guess_type(found.object_key)[0]
        or "application/octet-stream"
    )
    process = params.get("x-oss-process")
    if process is not None:
        data = resized(data, process)
    if content_type.startswith("text/") and "charset" not in content_type:
        content_type += "; charset=utf-8"
    expires = re.search(r"[?&]expires=(\d+)", signed)
    now = time.time() if now is None else now
    remaining = max(0, int(expires.group(1)) - int(now)) if expires else 0
    headers = {
        "Content-Type": content_type,
        "Cache-Control": f"private, max-age={remaining}, immutable",
        "X-Content-Type-Options": "nosniff",
    }
    disposition = params.get("response-content-disposition")
    if disposition is not None:
        headers["Content-Disposition"] = disposition
    return FileReply(data, headers)


_RESIZE = re.compile(r"image/resize,w_(\d{1,4})\Z")


def resized(data: bytes, process: str) -> bytes:
    """``data`` (an image) scaled down to the width ``process`` asks for
    (``image/resize,w_<n>``, OSS's syntax), in its own format; never scaled up."""
    match = _RESIZE.match(process)
    if match is None or not 1 <= int(match.group(1)) <= 4096:
        raise Refused(400, f"unsupported image operation {process!r}")
    from PIL import Image, UnidentifiedImageError  # the example extra

    width = int(match.group(1))
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or "PNG"
            if image.width > width:
                height = max(1, round(image.height * width / image.width))
                image = image.resize((width, height))
            out = io.BytesIO()
            image.save(out, format=kind)
    except (UnidentifiedImageError, OSError):
        raise Refused(400, "not an image") from None
    return out.getvalue()


def page_urls(urls: SignedURLs) -> Any:
    """The query option the apps' pages use: every URL a page shows (files and avatar
    thumbnails) read in one Redis round trip right after the query."""
    return urls.prefetch("url", "thumb_url")


# -- logs ------------------------------------------------------------------------------------


#: Signatures (``signature``, ``x-oss-signature``, ``X-Amz-Signature``) and the session tokens
#: some URLs carry (``security-token``, ``X-Amz-Security-Token``) in a query string.
SIGNATURE_PATTERN = re.compile(
    r"(?i)([?&](?:x-(?:oss|amz)-)?(?:signature|security-token)=)[^&\s\"']+"
)


def redact(text: str) -> str:
    """``text`` with URL signatures and tokens blanked: ``?...&signature=<redacted>``."""
    return SIGNATURE_PATTERN.sub(r"\1<redacted>", text)


class RedactSignatures(logging.Filter):
    """Blanks URL signatures and tokens in log lines: a signed URL is a bearer credential.

    Web servers log every request line, ``/files/...?signature=...`` included; the apps put
    this filter on the servers' loggers (:data:`ACCESS_LOGGERS`)::

        logging.getLogger("uvicorn.access").addFilter(RedactSignatures())

    It rewrites the message and its arguments, positional (werkzeug, uvicorn) or named
    (gunicorn's access log passes its atoms as one mapping), and keeps every record.
    """

    #: Kept for code that used the pattern through the filter.
    PATTERN = SIGNATURE_PATTERN

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, MutableMapping):
            # In place: gunicorn's atoms are a dict subclass with its own lookup rules.
            for name, value in list(args.items()):
                if isinstance(value, str):
                    args[name] = redact(value)
        elif isinstance(args, Mapping):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
        return True


def redact_access_logs() -> None:
    """Put :class:`RedactSignatures` on every logger of :data:`ACCESS_LOGGERS` (once)."""
    for name in ACCESS_LOGGERS:
        access_log = logging.getLogger(name)
        if not any(isinstance(f, RedactSignatures) for f in access_log.filters):
            access_log.addFilter(RedactSignatures())
