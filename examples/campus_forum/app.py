"""The campus forum's Flask app factory and its pages."""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from sqla_signed_urls import Settings, SignatureError, SignedURLs
from sqla_signed_urls.flask import admin_blueprint
from sqla_signed_urls.service import CacheService
from sqla_signed_urls.signers import LocalSigner, OSSSigner, Signer

from .demo_data import load_demo_data
from .images import identicon_png, sniff_image_type
from .models import Base, File, Post, User
from .storage import LocalStorage, OSSStorage, Storage

__all__ = ["Forum", "create_app"]

log = logging.getLogger("examples.campus_forum")

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Read from the environment (``app.config`` and ``create_app(config)`` override them).
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
)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

bp = Blueprint("forum", __name__)


class Forum:
    """Everything the app shares between requests, kept in ``app.extensions["campus_forum"]``.

    ::

        forum = Forum.of(app)
        with forum.Session() as session:
            files = session.scalars(select(File)).all()
            forum.urls.resolve(files)
    """

    def __init__(
        self,
        engine: Engine,
        urls: SignedURLs,
        signer: Signer,
        storage: Storage,
        *,
        own_engine: bool,
    ) -> None:
        self.engine = engine
        self.Session = sessionmaker(engine, expire_on_commit=False)
        self.urls = urls
        self.signer = signer
        self.storage = storage
        self._own_engine = own_engine

    @staticmethod
    def of(app: Flask) -> Forum:
        forum: Forum = app.extensions["campus_forum"]
        return forum

    @property
    def serves_files(self) -> bool:
        """True when the app serves ``/files`` itself (``LocalSigner``)."""
        return isinstance(self.signer, LocalSigner)

    def close(self) -> None:
        """Undo ``install()``, stop the cache's background thread, release the database."""
        self.urls.uninstall()
        self.urls.close()
        if self._own_engine:
            self.engine.dispose()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the forum. With no configuration it runs on embedded defaults: SQLite in
    ``instance/``, an in-process Redis, ``LocalSigner`` with files under ``instance/uploads``.

    Environment: ``DATABASE_URL``, ``REDIS_URL``, ``ADMIN_TOKEN`` (mounts the admin API),
    ``FILES_SECRET``, the ``FILE_URL_*`` settings, and ``OSS_*`` to sign with OSS.
    ``config`` overrides them; tests also pass ``ENGINE`` (an Engine), ``REDIS_CLIENT`` (a
    redis-py client) and ``INSTANCE_PATH``.
    """
    app = Flask("examples.campus_forum", instance_path=(config or {}).get("INSTANCE_PATH"))
    app.config.update(
        LOAD_DEMO_DATA=True,
        AUTO_MIGRATE=True,
        POSTS_PER_PAGE=10,
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
        UPLOAD_DIR=None,
        ENGINE=None,
        REDIS_CLIENT=None,
    )
    app.config.update({name: os.environ.get(name) or None for name in ENV_SETTINGS})
    if config:
        app.config.update(config)

    engine, own_engine = _engine(app)
    if app.config["AUTO_MIGRATE"]:
        init_db(engine)
    signer, storage = _signer_and_storage(app)
    settings, redis_url = Settings.from_mapping(
        {
            k: v
            for k, v in app.config.items()
            if isinstance(k, str) and k.startswith(("FILE_URL_", "REDIS_URL"))
        }
    )
    redis = app.config["REDIS_CLIENT"] or redis_url
    urls = SignedURLs(signer, settings=settings, redis=redis)
    urls.install(Base)
    forum = Forum(engine, urls, signer, storage, own_engine=own_engine)
    app.extensions["campus_forum"] = forum

    if app.config["LOAD_DEMO_DATA"]:
        with forum.Session() as session:
            if not session.scalar(select(func.count()).select_from(User)):
                load_demo_data(session, storage)
                log.info("filled the empty forum with demo data")

    app.register_blueprint(bp)
    if forum.serves_files:
        app.add_url_rule("/files/<path:key>", "files", serve_file)
    _mount_admin(app, forum)
    _redact_access_log()
    app.teardown_appcontext(_close_session)
    return app


def _engine(app: Flask) -> tuple[Engine, bool]:
    engine = app.config["ENGINE"]
    if engine is not None:
        return engine, False
    url = app.config["DATABASE_URL"]
    if not url:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(app.instance_path) / 'campus_forum.db'}"
    return create_engine(url), True


def init_db(engine: Engine) -> None:
    """Bring the schema up to date with the alembic migrations next to this example
    (``migrations/`` at the repository root); without alembic, create the tables directly."""
    ini = REPO_ROOT / "alembic.ini"
    try:
        from alembic import command
        from alembic.config import Config
    except ImportError:
        Base.metadata.create_all(engine)
        return
    if not ini.exists():
        Base.metadata.create_all(engine)
        return
    cfg = Config(str(ini))
    cfg.attributes["configure_logger"] = False
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def _signer_and_storage(app: Flask) -> tuple[Signer, Storage]:
    oss_env = {
        k: v for k, v in app.config.items() if isinstance(k, str) and k.startswith("OSS_") and v
    }
    if oss_env:
        signer = OSSSigner.from_env(oss_env)
        return signer, OSSStorage(signer.bucket)
    secret = app.config["FILES_SECRET"] or _instance_secret(app)
    upload_dir = app.config["UPLOAD_DIR"] or Path(app.instance_path) / "uploads"
    return LocalSigner(secret, base_url="/files"), LocalStorage(upload_dir)


def _instance_secret(app: Flask) -> str:
    """A secret kept in ``instance/files_secret``, so signed URLs survive restarts."""
    path = Path(app.instance_path) / "files_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


class RedactSignatures(logging.Filter):
    """Blanks URL signatures in log lines: a signed URL is a bearer credential.

    The development server logs every request line, ``/files/...?signature=...`` included;
    ``create_app`` puts this filter on its logger::

        logging.getLogger("werkzeug").addFilter(RedactSignatures())
    """

    PATTERN = re.compile(r"(?i)([?&](?:x-oss-)?signature=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1<redacted>", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.PATTERN.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def _redact_access_log() -> None:
    access_log = logging.getLogger("werkzeug")
    if not any(isinstance(f, RedactSignatures) for f in access_log.filters):
        access_log.addFilter(RedactSignatures())


def _mount_admin(app: Flask, forum: Forum) -> None:
    token = app.config["ADMIN_TOKEN"]
    if not token:
        return
    service = CacheService(forum.urls, session_factory=forum.Session, model=File)
    app.register_blueprint(admin_blueprint(service, token=token))


def _close_session(exc: BaseException | None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


def db() -> Session:
    """This request's session."""
    if "db" not in g:
        g.db = Forum.of(current_app).Session()
    session: Session = g.db
    return session


def resolve(files: Iterable[File | None]) -> dict[int, str | None]:
    """Signed URLs for every file on a page, in one batch: ``{file.id: url}``."""
    unique = {f.id: f for f in files if f is not None}
    found = Forum.of(current_app).urls.resolve(unique.values())
    return dict(zip(unique, found, strict=True))


# -- pages -----------------------------------------------------------------------------------


@bp.get("/")
def index() -> str:
    per_page = current_app.config["POSTS_PER_PAGE"]
    page = max(1, request.args.get("page", 1, type=int) or 1)
    session = db()
    total = session.scalar(select(func.count()).select_from(Post)) or 0
    posts = session.scalars(
        select(Post)
        .options(selectinload(Post.author).selectinload(User.avatar), selectinload(Post.files))
        .order_by(Post.created_at.desc(), Post.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    url_of = resolve(f for post in posts for f in (post.author.avatar, *post.files))
    return render_template(
        "index.html",
        posts=posts,
        url_of=url_of,
        page=page,
        pages=max(1, -(-total // per_page)),
    )


@bp.get("/posts/<int:post_id>")
def post(post_id: int) -> str:
    session = db()
    found = session.get(Post, post_id)
    if found is None:
        abort(404)
    # One post: plain attribute reads are fine (each one is an in-process or Redis hit).
    return render_template("post.html", post=found)


@bp.get("/users/<int:user_id>")
def user(user_id: int) -> str:
    session = db()
    found = session.get(User, user_id)
    if found is None:
        abort(404)
    posts = session.scalars(
        select(Post)
        .where(Post.author_id == user_id)
        .options(selectinload(Post.files))
        .order_by(Post.created_at.desc())
    ).all()
    url_of = resolve([found.avatar, *(f for p in posts for f in p.files)])
    return render_template("user.html", user=found, posts=posts, url_of=url_of)


@bp.post("/users/<int:user_id>/avatar")
def replace_avatar(user_id: int) -> ResponseReturnValue:
    """Replace a user's avatar with an uploaded image (or a freshly drawn identicon).

    The ``File`` row keeps its id; its object key changes, so the commit invalidates
    ``file_url:<id>`` and every page shows the new image under a new signed URL.
    This demo has no accounts: anyone may change any avatar.
    """
    forum = Forum.of(current_app)
    session = db()
    found = session.get(User, user_id)
    if found is None:
        abort(404)
    upload = request.files.get("avatar")
    if upload is not None and upload.filename:
        data = upload.read()
        content_type = sniff_image_type(data)
        if content_type is None:
            abort(400, "upload a PNG, JPEG, GIF or WebP image")
    else:
        data = identicon_png(secrets.randbits(32))
        content_type = "image/png"
    extension = mimetypes.guess_extension(content_type) or ".img"
    key = f"avatars/{found.id}/{secrets.token_hex(6)}{extension}"
    forum.storage.put(key, data, content_type)
    avatar = found.avatar
    old_key = None
    if avatar is None:
        avatar = File(file_type="avatar", owner_id=found.id)
        session.add(avatar)
    else:
        old_key = avatar.object_key
    avatar.object_key = key
    avatar.filename = f"avatar{extension}"
    avatar.content_type = content_type
    avatar.size = len(data)
    session.commit()  # after this commit, SignedURLs drops the cached URL of this file
    if old_key:
        forum.storage.delete(old_key)
    return redirect(url_for("forum.user", user_id=found.id), code=303)


def serve_file(key: str) -> Response:
    """Serve a stored object behind a ``LocalSigner`` URL: 403 unless the signature checks out.

    The URL changes whenever the file does, so browsers may keep the response for as long as
    the URL stays valid.
    """
    forum = Forum.of(current_app)
    signer = forum.signer
    assert isinstance(signer, LocalSigner)
    signed = quote(request.path, safe="/")
    if request.query_string:
        signed += "?" + request.query_string.decode("latin-1")
    try:
        object_key = signer.verify(signed)
    except SignatureError:
        abort(403)
    data = forum.storage.get(object_key)
    if data is None:
        abort(404)
    content_type = mimetypes.guess_type(object_key)[0] or "application/octet-stream"
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    response = Response(data, content_type=content_type)
    remaining = max(0, int(request.args["expires"]) - int(time.time()))
    response.headers["Cache-Control"] = f"private, max-age={remaining}, immutable"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
