"""The campus forum's Flask app factory and its pages."""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.flask import admin_blueprint
from sqla_signed_urls.service import CacheService
from sqla_signed_urls.signers import LocalSigner, Signer

from . import common
from .common import RedactSignatures, Refused
from .models import Base, File
from .storage import Storage

__all__ = ["Forum", "RedactSignatures", "create_app"]

log = logging.getLogger("examples.campus_forum")

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
    ``FILES_SECRET``, the ``FILE_URL_*`` settings, ``OSS_*`` to sign with OSS,
    ``INSTANCE_PATH`` (where the SQLite database, the secret and the uploads go),
    ``UPLOAD_DIR``, ``AUTO_MIGRATE`` and ``LOAD_DEMO_DATA`` (``0`` turns them off) and
    ``DEMO_POSTS``. ``config`` overrides them; tests also pass ``ENGINE`` (an Engine) and
    ``REDIS_CLIENT`` (a redis-py client).

    The database is prepared (migrated, demo data loaded when empty) before the app is
    returned, one process at a time (:func:`~examples.campus_forum.common.prepare_database`),
    so any number of workers may start together. The engine is safe to fork afterwards
    (``gunicorn --preload``).
    """
    settings = common.settings({"ENGINE": None, "REDIS_CLIENT": None, **(config or {})})
    instance = common.instance_path(settings)
    app = Flask("examples.campus_forum", instance_path=str(instance))
    app.config.update(settings)

    engine, own_engine = _engine(app, instance)
    signer, storage = common.signer_and_storage(app.config, instance)
    if app.config["AUTO_MIGRATE"] or app.config["LOAD_DEMO_DATA"]:
        demo_posts = app.config["DEMO_POSTS"] if app.config["LOAD_DEMO_DATA"] else None
        with engine.connect() as connection:
            prepared = common.prepare_database(
                connection, storage, migrate=app.config["AUTO_MIGRATE"], demo_posts=demo_posts
            )
        if prepared.demo_loaded:
            log.info("filled the empty forum with demo data")
    if own_engine:
        engine.dispose()  # no connection left open in a process that may fork workers
    cache, redis_url = common.cache_settings(app.config)
    redis = app.config["REDIS_CLIENT"] or redis_url
    urls = SignedURLs(signer, settings=cache, redis=redis)
    urls.install(Base)
    forum = Forum(engine, urls, signer, storage, own_engine=own_engine)
    app.extensions["campus_forum"] = forum

    app.register_blueprint(bp)
    if forum.serves_files:
        app.add_url_rule("/files/<path:key>", "files", serve_file)
    _mount_admin(app, forum)
    common.redact_access_logs()
    app.teardown_appcontext(_close_session)
    return app


def _engine(app: Flask, instance: Path) -> tuple[Engine, bool]:
    engine = app.config["ENGINE"]
    if engine is not None:
        return engine, False
    engine = create_engine(common.database_url(app.config, instance))
    common.dispose_after_fork(engine)
    return engine, True


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


def urls() -> SignedURLs:
    """The app's ``SignedURLs``."""
    return Forum.of(current_app).urls


def db() -> Session:
    """This request's session."""
    if "db" not in g:
        g.db = Forum.of(current_app).Session()
    session: Session = g.db
    return session


# -- pages -----------------------------------------------------------------------------------


@bp.get("/")
def index() -> str:
    per_page = current_app.config["POSTS_PER_PAGE"]
    page = max(1, request.args.get("page", 1, type=int) or 1)
    session = db()
    total = session.scalar(common.count_posts()) or 0
    # prefetch(): the URLs of every file the query loads (avatars and their thumbnails,
    # images, attachments) are read in one Redis round trip, so each file.url the template
    # reads is an in-process hit.
    stmt = common.index_statement(page, per_page).options(common.page_urls(urls()))
    posts = session.scalars(stmt).all()
    return render_template(
        "index.html", posts=posts, page=page, pages=max(1, -(-total // per_page))
    )


@bp.get("/posts/<int:post_id>")
def post(post_id: int) -> str:
    found = db().scalar(common.post_statement(post_id).options(common.page_urls(urls())))
    if found is None:
        abort(404)
    return render_template("post.html", post=found)


@bp.get("/users/<int:user_id>")
def user(user_id: int) -> str:
    session = db()
    found = session.scalar(common.user_statement(user_id).options(common.page_urls(urls())))
    if found is None:
        abort(404)
    posts = session.scalars(common.user_posts_statement(user_id).options(common.page_urls(urls())))
    return render_template("user.html", user=found, posts=posts.all())


@bp.post("/users/<int:user_id>/avatar")
def replace_avatar(user_id: int) -> ResponseReturnValue:
    """Replace a user's avatar with an uploaded image (or a freshly drawn identicon).

    After the commit, ``file_url:<id>`` of the avatar is gone from the cache and every page
    shows the new image under a new signed URL. This demo has no accounts: anyone may change
    any avatar.
    """
    forum = Forum.of(current_app)
    session = db()
    found = session.scalar(common.user_statement(user_id))
    if found is None:
        abort(404)
    upload = request.files.get("avatar")
    try:
        image = common.new_avatar(
            found.id, upload.read() if upload is not None else None, forum.storage
        )
    except Refused as refused:
        abort(refused.status, refused.reason)
    added, old_key = image.apply(found)
    if added is not None:
        session.add(added)
    session.commit()  # after this commit, SignedURLs drops the cached URL of this file
    if old_key:
        forum.storage.delete(old_key)
    return redirect(url_for("forum.user", user_id=found.id), code=303)


@bp.post("/posts/<int:post_id>/files/<int:file_id>/delete")
def delete_file(post_id: int, file_id: int) -> ResponseReturnValue:
    """Remove an image or attachment from a post: the row, then the stored object.

    The commit drops ``file_url:<id>`` from the cache and from every process's in-process
    layer; the post page no longer shows the file, and its old URL answers 404.
    """
    forum = Forum.of(current_app)
    session = db()
    found = session.scalar(common.post_file_statement(post_id, file_id))
    if found is None:
        abort(404)
    object_key = found.object_key
    session.delete(found)
    session.commit()
    if object_key:
        forum.storage.delete(object_key)
    return redirect(url_for("forum.post", post_id=post_id), code=303)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """For load balancers and orchestrators: 200 while the database answers, else 503."""
    try:
        db().execute(select(1))
        database_ok = True
    except (SQLAlchemyError, OSError):
        database_ok = False
    status, body = common.health(database_ok, urls().redis_available)
    return body, status


def serve_file(key: str) -> Response:
    """Serve a stored object behind a ``LocalSigner`` URL: 403 unless the signature checks out."""
    forum = Forum.of(current_app)
    assert isinstance(forum.signer, LocalSigner)
    signed = quote(request.path, safe="/")
    if request.query_string:
        signed += "?" + request.query_string.decode("latin-1")
    try:
        reply = common.check_file_request(forum.signer, forum.storage, signed)
    except Refused as refused:
        abort(refused.status)
    return Response(reply.data, headers=reply.headers)
