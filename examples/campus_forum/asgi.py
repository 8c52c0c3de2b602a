"""The Campus Forum on FastAPI and ``AsyncSession``: the pages of the Flask app, served by an
async app on ``AsyncSession``: each page's query carries ``urls.prefetch()``, so the page's
URLs are read with one awaited ``MGET`` on the ``redis.asyncio`` client.

Run it on embedded defaults (SQLite through aiosqlite in ``instance/``, an in-process Redis,
``LocalSigner``)::

    uvicorn --factory examples.campus_forum.asgi:create_app

``DATABASE_URL`` (``postgresql://...`` runs on asyncpg), ``REDIS_URL``, ``ADMIN_TOKEN`` (mounts
the admin API) and the ``OSS_*`` variables switch it to real servers, as for the Flask app.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, UploadFile
from fastapi import File as FormFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from starlette.routing import NoMatchFound

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.fastapi import admin_router
from sqla_signed_urls.service import CacheService
from sqla_signed_urls.signers import LocalSigner, Signer

from . import common
from .common import Refused
from .models import Base, File
from .storage import Storage

__all__ = ["AsyncForum", "async_database_url", "create_app"]

log = logging.getLogger("examples.campus_forum")

TEMPLATES = Path(__file__).parent / "templates"
#: The async driver used for a database URL that names a sync one (or none).
ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
}


class AsyncForum:
    """Everything the async app shares between requests, kept in ``app.state.forum``::

    forum = AsyncForum.of(app)
    async with forum.Session() as session:
        files = (await session.scalars(select(File).options(forum.urls.prefetch()))).all()
        [file.url for file in files]  # in-process hits: the query read them all at once
    """

    def __init__(
        self,
        engine: AsyncEngine,
        urls: SignedURLs,
        signer: Signer,
        storage: Storage,
        *,
        own_engine: bool,
        posts_per_page: int = 10,
        max_upload: int = 2 * 1024 * 1024,
    ) -> None:
        self.engine = engine
        self.Session = async_sessionmaker(engine, expire_on_commit=False)
        self.urls = urls
        self.signer = signer
        self.storage = storage
        self.posts_per_page = posts_per_page
        self.max_upload = max_upload
        self.templates: Jinja2Templates
        self._own_engine = own_engine

    @staticmethod
    def of(app: FastAPI) -> AsyncForum:
        forum: AsyncForum = app.state.forum
        return forum

    async def aclose(self) -> None:
        """Undo ``install()``, close the cache's clients and threads, release the database."""
        self.urls.uninstall()
        await self.urls.aclose()
        if self._own_engine:
            await self.engine.dispose()


def async_database_url(url: str) -> str:
    """``url`` with an async driver: ``postgresql://`` and ``postgresql+psycopg://`` become
    ``postgresql+asyncpg://``, ``sqlite://`` becomes ``sqlite+aiosqlite://``; a URL that
    already names an async driver is kept."""
    parsed = make_url(url)
    driver = ASYNC_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(False) if driver else url


def create_app(config: Mapping[str, Any] | None = None) -> FastAPI:
    """Build the async forum. With no configuration it runs on embedded defaults: SQLite in
    ``instance/`` (the Flask app's database), an in-process Redis, ``LocalSigner`` with files
    under ``instance/uploads``.

    Environment: as :func:`examples.campus_forum.create_app`. ``config`` overrides it; tests
    also pass ``ENGINE`` (an ``AsyncEngine``) or ``ENGINE_OPTIONS`` (for
    ``create_async_engine``), and ``REDIS_CLIENT`` / ``ASYNC_REDIS_CLIENT`` (redis-py
    clients). The database is migrated and, when empty, filled with demo data when the app
    starts (its lifespan), one process at a time, so any number of workers may start
    together; the engine is safe to fork (``gunicorn --preload``).
    """
    settings = common.settings(
        {
            "ENGINE": None,
            "ENGINE_OPTIONS": {},
            "REDIS_CLIENT": None,
            "ASYNC_REDIS_CLIENT": None,
            **(config or {}),
        }
    )
    instance = common.instance_path(settings)
    engine, own_engine = settings["ENGINE"], False
    if engine is None:
        url = async_database_url(common.database_url(settings, instance))
        engine = create_async_engine(url, **settings["ENGINE_OPTIONS"])
        common.dispose_after_fork(engine.sync_engine)
        own_engine = True
    signer, storage = common.signer_and_storage(settings, instance)
    cache, redis_url = common.cache_settings(settings)
    urls = SignedURLs(
        signer,
        settings=cache,
        redis=settings["REDIS_CLIENT"] or redis_url,
        async_redis=settings["ASYNC_REDIS_CLIENT"],
    )
    urls.install(Base)
    forum = AsyncForum(
        engine,
        urls,
        signer,
        storage,
        own_engine=own_engine,
        posts_per_page=settings["POSTS_PER_PAGE"],
        max_upload=settings["MAX_CONTENT_LENGTH"],
    )
    demo_posts = settings["DEMO_POSTS"] if settings["LOAD_DEMO_DATA"] else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await _prepare(forum, migrate=settings["AUTO_MIGRATE"], demo_posts=demo_posts)
            yield
        finally:
            await forum.aclose()

    app = FastAPI(title="Campus Forum", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.forum = forum
    forum.templates = _templates(app)
    app.include_router(pages)
    if isinstance(signer, LocalSigner):
        app.add_api_route("/files/{key:path}", serve_file, methods=["GET"], name="files")
    if settings["ADMIN_TOKEN"]:
        service = CacheService(urls, async_session_factory=forum.Session, model=File)
        app.include_router(admin_router(service, token=settings["ADMIN_TOKEN"]))
    common.redact_access_logs()
    return app


async def _prepare(forum: AsyncForum, *, migrate: bool, demo_posts: int | None) -> None:
    """Migrate and load demo data, one process at a time (see ``common.prepare_database``)."""
    if not migrate and demo_posts is None:
        return
    async with forum.engine.connect() as connection:
        prepared = await connection.run_sync(
            common.prepare_database, forum.storage, migrate=migrate, demo_posts=demo_posts
        )
    if prepared.demo_loaded:
        log.info("filled the empty forum with demo data")


# -- templates -------------------------------------------------------------------------------


def _templates(app: FastAPI) -> Jinja2Templates:
    """The Flask app's templates, with a ``url_for`` like Flask's: path parameters fill the
    route, the rest become the query string (``url_for('forum.index', page=2)`` is
    ``/?page=2``)."""
    templates = Jinja2Templates(directory=TEMPLATES)

    def url_for(name: str, **values: Any) -> str:
        names = list(values)
        for size in range(len(names), -1, -1):  # the most values the route takes as its path
            for path_names in itertools.combinations(names, size):
                try:
                    path = app.url_path_for(name, **{k: values[k] for k in path_names})
                except NoMatchFound:
                    continue
                query = {k: v for k, v in values.items() if k not in path_names}
                return f"{path}?{urlencode(query)}" if query else str(path)
        raise NoMatchFound(name, values)

    templates.env.globals["url_for"] = url_for
    return templates


def render(request: Request, template: str, **context: Any) -> HTMLResponse:
    return AsyncForum.of(request.app).templates.TemplateResponse(request, template, context)


# -- pages -----------------------------------------------------------------------------------


async def db(request: Request) -> AsyncIterator[AsyncSession]:
    """This request's session."""
    async with AsyncForum.of(request.app).Session() as session:
        yield session


DB = Annotated[AsyncSession, Depends(db)]
pages = APIRouter()


@pages.get("/", name="forum.index", response_class=HTMLResponse)
async def index(request: Request, session: DB, page: str = "1") -> HTMLResponse:
    forum = AsyncForum.of(request.app)
    number = max(1, int(page)) if page.isdigit() else 1
    total = await session.scalar(common.count_posts()) or 0
    # prefetch(): once the query has loaded the page (posts, authors, avatars, files), every
    # URL on it (files and avatar thumbnails) is read with one awaited MGET on the async
    # client, so each file.url the template reads is an in-process hit.
    stmt = common.index_statement(number, forum.posts_per_page)
    posts = (await session.scalars(stmt.options(common.page_urls(forum.urls)))).all()
    return render(
        request,
        "index.html",
        posts=posts,
        page=number,
        pages=max(1, -(-total // forum.posts_per_page)),
    )


@pages.get("/posts/{post_id}", name="forum.post", response_class=HTMLResponse)
async def post(request: Request, session: DB, post_id: int) -> HTMLResponse:
    urls = AsyncForum.of(request.app).urls
    found = await session.scalar(common.post_statement(post_id).options(common.page_urls(urls)))
    if found is None:
        raise HTTPException(404)
    return render(request, "post.html", post=found)


@pages.get("/users/{user_id}", name="forum.user", response_class=HTMLResponse)
async def user(request: Request, session: DB, user_id: int) -> HTMLResponse:
    option = common.page_urls(AsyncForum.of(request.app).urls)
    found = await session.scalar(common.user_statement(user_id).options(option))
    if found is None:
        raise HTTPException(404)
    posts = (await session.scalars(common.user_posts_statement(user_id).options(option))).all()
    return render(request, "user.html", user=found, posts=posts)


@pages.post("/users/{user_id}/avatar", name="forum.replace_avatar")
async def replace_avatar(
    request: Request,
    session: DB,
    user_id: int,
    avatar: Annotated[UploadFile | None, FormFile()] = None,
) -> RedirectResponse:
    """Replace a user's avatar with an uploaded image (or a freshly drawn identicon).

    When ``await session.commit()`` returns, ``file_url:<id>`` of the avatar is gone from
    Redis (deleted through the async client) and every page shows the new image under a new
    signed URL. This demo has no accounts: anyone may change any avatar.
    """
    forum = AsyncForum.of(request.app)
    found = await session.scalar(common.user_statement(user_id))
    if found is None:
        raise HTTPException(404)
    upload = await avatar.read(forum.max_upload + 1) if avatar and avatar.filename else None
    if upload is not None and len(upload) > forum.max_upload:
        raise HTTPException(413, f"the image is larger than {forum.max_upload} bytes")
    try:
        image = await asyncio.to_thread(common.new_avatar, found.id, upload, forum.storage)
    except Refused as refused:
        raise HTTPException(refused.status, refused.reason) from None
    added, old_key = image.apply(found)
    if added is not None:
        session.add(added)
    await session.commit()
    if old_key:
        await asyncio.to_thread(forum.storage.delete, old_key)
    return RedirectResponse(request.app.url_path_for("forum.user", user_id=found.id), 303)


@pages.post("/posts/{post_id}/files/{file_id}/delete", name="forum.delete_file")
async def delete_file(
    request: Request, session: DB, post_id: int, file_id: int
) -> RedirectResponse:
    """Remove an image or attachment from a post: the row, then the stored object.

    When ``await session.commit()`` returns, ``file_url:<id>`` is gone from Redis and every
    process has been told to drop its in-process copy.
    """
    forum = AsyncForum.of(request.app)
    found = await session.scalar(common.post_file_statement(post_id, file_id))
    if found is None:
        raise HTTPException(404)
    object_key = found.object_key
    await session.delete(found)
    await session.commit()
    if object_key:
        await asyncio.to_thread(forum.storage.delete, object_key)
    return RedirectResponse(request.app.url_path_for("forum.post", post_id=post_id), 303)


@pages.get("/healthz", name="forum.healthz")
async def healthz(request: Request, session: DB) -> JSONResponse:
    """For load balancers and orchestrators: 200 while the database answers, else 503."""
    try:
        await session.execute(select(1))
        database_ok = True
    except (SQLAlchemyError, OSError):
        database_ok = False
    status, body = common.health(database_ok, AsyncForum.of(request.app).urls.redis_available)
    return JSONResponse(body, status_code=status)


async def serve_file(request: Request, key: str) -> Response:
    """Serve a stored object behind a ``LocalSigner`` URL: 403 unless the signature checks out."""
    forum = AsyncForum.of(request.app)
    assert isinstance(forum.signer, LocalSigner)
    signed = quote(request.scope["path"], safe="/")
    query = request.scope.get("query_string", b"")
    if query:
        signed += "?" + query.decode("latin-1")
    try:
        reply = await asyncio.to_thread(
            common.check_file_request, forum.signer, forum.storage, signed
        )
    except Refused as refused:
        raise HTTPException(refused.status) from None
    return Response(reply.data, headers=reply.headers)
