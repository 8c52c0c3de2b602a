"""Flask integration: the admin endpoints, the cache dashboard and an extension reading
``app.config``.

Needs the ``flask`` extra: importing this module without Flask raises
:class:`~sqla_signed_urls.ConfigurationError` naming ``pip install "sqla-signed-urls[flask]"``.
The rest of the package never imports Flask.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.exc import DBAPIError

from ._extras import require

try:  # the `flask` extra
    from flask import Blueprint, Flask, Response, jsonify, request
    from flask.blueprints import BlueprintSetupState
    from werkzeug.exceptions import MethodNotAllowed, NotFound
except ImportError:
    require("flask", "flask", "sqla_signed_urls.flask")
    raise

from ._admin import (
    MAX_BODY_BYTES,
    Refused,
    db_message,
    fields,
    history_query,
    parse_body,
    too_big,
)
from .config import Settings
from .core import SignedURLs
from .dashboard import ACTIONS, COOKIE, Answer, Dashboard, PageRequest, drive
from .exceptions import CacheError, ConfigurationError
from .service import CacheService, SessionFactory
from .signers.base import Signer

__all__ = ["EXTENSION_KEY", "FlaskSignedURLs", "admin_blueprint", "init_app"]

log = logging.getLogger("sqla_signed_urls")

#: ``app.extensions`` key the extension stores itself under.
EXTENSION_KEY = "sqla_signed_urls"


def admin_blueprint(
    service: CacheService,
    *,
    token: str | None = None,
    url_prefix: str = "/api/admin/cache",
    name: str = "sqla_signed_urls_admin",
) -> Blueprint:
    """The admin endpoints (stats, history, clear, warm, refresh) behind a bearer token, and
    the cache dashboard for browsers.

    ::

        app.register_blueprint(admin_blueprint(service, token=os.environ["ADMIN_TOKEN"]))

    ============================  ===========================  ======================
    ``GET  <prefix>/stats``       --                           200, the stats
    ``GET  <prefix>/history``     ``?since=<Unix seconds>``    200, the history points
    ``POST <prefix>/clear``       ``{"file_id": 123}`` or {}   200, ``{"cleared": n}``
    ``POST <prefix>/warm``        ``{"file_type": "avatar"}``  200, ``{"warmed": n}``
    ``POST <prefix>/refresh``     ``{"within": 600}`` or {}    200, ``{"refreshed": n}``
    ``GET  <prefix>/dashboard``   browser sign-in, then HTML   the dashboard page
    ============================  ===========================  ======================

    The dashboard (:mod:`sqla_signed_urls.dashboard`) signs a browser in with the same token
    (a form, then an HttpOnly, SameSite=Strict session cookie) and posts its operations with a
    CSRF token; the JSON endpoints take the bearer token only.

    The token is ``token`` or the ``ADMIN_TOKEN`` environment variable; without one this
    raises :class:`~sqla_signed_urls.ConfigurationError`, so the API is never open by
    default. A missing or wrong ``Authorization: Bearer <token>`` gives 401; a malformed
    body, a wrong type or an unknown field gives 400 naming the field, and nothing runs;
    a ``file_id`` must be a non-negative whole number.
    Redis or the database being down gives 503. Every error answer is JSON ``{"error": ...}``.

    That includes routing errors under the prefix the blueprint is registered at: an unknown
    path gives 404 and a wrong method 405 (with ``Allow``), but only with the token; without
    it they get the same 401 as the endpoints, so the API's paths and methods cannot be probed.
    They are answered by an app ``before_request`` hook that touches only routing failures
    under the prefix, so the app's own pages and error handlers are left as they were. A
    blueprint mounted without a prefix leaves every routing error to the app.
    """
    if not isinstance(service, CacheService):
        raise ConfigurationError(
            f"admin_blueprint(service=...): expected a CacheService, got {type(service).__name__}"
        )
    if token is None:
        token = os.environ.get("ADMIN_TOKEN")
    if not isinstance(token, str) or not token.strip():
        raise ConfigurationError(
            "admin_blueprint: no admin token; pass token=... or set ADMIN_TOKEN "
            "(the admin API is never served without one)"
        )
    expected = hashlib.sha256(token.encode()).digest()
    bp = Blueprint(name, __name__, url_prefix=url_prefix)
    dashboard = Dashboard(token, settings=service.urls.settings)

    def _authenticate() -> Response | None:
        if (request.endpoint or "").rpartition(".")[2].startswith("dashboard"):
            return None  # the dashboard signs browsers in with a session of its own
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        # Equal-length digests make the comparison constant-time whatever was sent.
        digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
        if given and hmac.compare_digest(digest, expected):
            return None
        response = _error(401, "missing or wrong admin token (Authorization: Bearer <token>)")
        response.headers["WWW-Authenticate"] = 'Bearer realm="cache admin"'
        return response

    bp.before_request(_authenticate)

    @bp.record
    def _answer_routing_errors(state: BlueprintSetupState) -> None:
        # Routing fails before a blueprint is chosen, so neither the blueprint's hooks nor its
        # error handlers run; an app error handler for 404/405 would collide with the app's own.
        prefix = (state.url_prefix or "").rstrip("/")
        if prefix:
            state.app.before_request(_routing_error_hook(prefix, _authenticate))

    @bp.errorhandler(Refused)
    def _bad_request(exc: Refused) -> Response:
        return _error(exc.status, exc.message, field=exc.field)

    @bp.errorhandler(CacheError)
    def _cache_down(exc: CacheError) -> Response:
        return _error(503, str(exc))

    @bp.errorhandler(DBAPIError)
    def _db_down(exc: DBAPIError) -> Response:
        log.error("cache admin: database error: %s", type(exc.orig).__name__)
        return _error(503, f"database unavailable: {db_message(exc)}")

    @bp.errorhandler(ConfigurationError)
    def _not_configured(exc: ConfigurationError) -> Response:
        return _error(501, str(exc))

    @bp.get("/stats")
    def stats() -> Response:
        return jsonify(service.get_cache_stats())

    @bp.get("/history")
    def history() -> Response:
        since = history_query(request.args.to_dict())
        interval = service.urls.settings.history_interval
        return jsonify(interval=interval, points=service.get_cache_history(since))

    @bp.post("/clear")
    def clear() -> Response:
        body = _body(fields("file_id"))
        return jsonify(cleared=service.clear_file_url_cache(body.get("file_id")))

    @bp.post("/warm")
    def warm() -> Response:
        body = _body(fields("file_type", "limit"))
        count = service.warm_file_url_cache(body.get("file_type"), limit=body.get("limit", 1000))
        return jsonify(warmed=count)

    @bp.post("/refresh")
    def refresh() -> Response:
        body = _body(fields("within"))
        return jsonify(refreshed=service.refresh_expired_urls(body.get("within", 600)))

    def page(action: str) -> Response:
        suffix = "/dashboard" + (f"/{action}" if action else "")
        path = request.path
        base = request.script_root + (path[: -len(suffix)] if path.endswith(suffix) else path)
        body: bytes | None = b""
        if request.method == "POST":
            body = None
            if (request.content_length or 0) <= MAX_BODY_BYTES:
                data = request.get_data(cache=False)
                body = data if len(data) <= MAX_BODY_BYTES else None
        page_request = PageRequest(
            method=request.method,
            action=action,
            base=base,
            query=request.args.to_dict(),
            cookie=request.cookies.get(COOKIE),
            body=body,
            secure=request.is_secure,
        )
        return _html(drive(dashboard.handle(page_request), _caller(service), _FAULTS))

    bp.add_url_rule("/dashboard", "dashboard", lambda: page(""), methods=["GET"])
    for action in ACTIONS:
        bp.add_url_rule(
            f"/dashboard/{action}",
            f"dashboard_{action.replace('-', '_')}",
            functools.partial(page, action),
            methods=["POST"],
        )
    return bp


#: What the dashboard reports instead of failing: Redis, the database, a missing setup.
_FAULTS: tuple[type[Exception], ...] = (CacheError, DBAPIError, ConfigurationError)


def _caller(service: CacheService) -> Callable[[str, tuple[Any, ...]], Any]:
    """Answers the dashboard's needs with the service's operations."""

    def call(need: str, args: tuple[Any, ...]) -> Any:
        if need == "stats":
            return service.get_cache_stats()
        if need == "history":
            since, limit = args
            return service.get_cache_history(since, limit=limit)
        if need == "histogram":
            return service.get_expiry_histogram()
        if need == "breaker":
            return service.urls.redis_available
        if need == "clear":
            return service.clear_file_url_cache(*args)
        if need == "warm":
            file_type, limit = args
            return service.warm_file_url_cache(file_type, limit=limit)
        if need == "refresh":
            return service.refresh_expired_urls(*args)
        raise LookupError(need)

    return call


def _html(answer: Answer) -> Response:
    response = Response(answer.body, status=answer.status)
    for name, value in answer.headers:
        if name == "Content-Type":
            response.headers[name] = value
        else:
            response.headers.add(name, value)
    return response


def _routing_error_hook(
    prefix: str, authenticate: Callable[[], Response | None]
) -> Callable[[], Response | None]:
    """An app ``before_request`` hook answering 404/405 under ``prefix`` as JSON."""

    def hook() -> Response | None:
        exc = request.routing_exception
        if not isinstance(exc, (NotFound, MethodNotAllowed)):
            return None
        path = request.path
        if path != prefix and not path.startswith(prefix + "/"):
            return None
        denied = authenticate()
        if denied is not None:
            return denied
        if isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(exc.valid_methods or ())
            response = _error(405, f"{request.method} is not allowed here (allowed: {allowed})")
            response.headers["Allow"] = allowed
            return response
        return _error(404, f"no admin endpoint at {path}")

    return hook


def _error(status: int, message: str, **extra: Any) -> Response:
    payload: dict[str, Any] = {"error": message}
    payload.update({k: v for k, v in extra.items() if v is not None})
    response = jsonify(payload)
    response.status_code = status
    return response


def _body(fields: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """The JSON object in the request body (empty body: ``{}``), every field validated."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise too_big()
    return parse_body(request.get_data(cache=False), fields)


class FlaskSignedURLs:
    """Flask extension: builds :class:`SignedURLs` and a :class:`CacheService` from the
    ``REDIS_URL`` and ``FILE_URL_*`` settings in ``app.config`` and can serve the admin API.

    ::

        signed_urls = FlaskSignedURLs(
            signer=OSSSigner(bucket), base=Base, session_factory=db.session, model=File,
            admin=True,
        )
        signed_urls.init_app(app)          # or FlaskSignedURLs(app, ...)
        signed_urls.urls                   # the SignedURLs; File.url works now
        app.extensions["sqla_signed_urls"] is signed_urls

    Read from ``app.config``: ``REDIS_URL``, ``FILE_URL_CACHE_TIMEOUT`` (cache_ttl),
    ``FILE_URL_CACHE_KEY_PREFIX``, ``FILE_URL_EXPIRES`` (url_ttl),
    ``FILE_URL_LOCAL_CACHE_SIZE``, ``FILE_URL_REDIS_TIMEOUT``, and with ``admin=True``
    ``ADMIN_TOKEN``. Without a ``signer`` the store's keys in ``app.config`` or the environment
    choose one: ``S3Signer`` when ``S3_BUCKET`` is set (``AWS_*``, ``S3_*``), ``OSSSigner``
    when ``OSS_BUCKET`` is (``OSS_*``). One extension object serves one app; registering on an
    app twice raises :class:`~sqla_signed_urls.ConfigurationError`.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        signer: Signer | None = None,
        base: Any = None,
        session_factory: SessionFactory | None = None,
        model: type[Any] | None = None,
        admin: bool = False,
        admin_token: str | None = None,
        admin_url_prefix: str = "/api/admin/cache",
    ) -> None:
        self._signer = signer
        self._base = base
        self._session_factory = session_factory
        self._model = model
        self._admin = admin
        self._admin_token = admin_token
        self._admin_url_prefix = admin_url_prefix
        self._urls: SignedURLs | None = None
        self._service: CacheService | None = None
        self.app: Flask | None = None
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        app = self.app.name if self.app is not None else None
        return f"FlaskSignedURLs(app={app!r})"

    @property
    def urls(self) -> SignedURLs:
        """The :class:`SignedURLs` built by :meth:`init_app`."""
        if self._urls is None:
            raise ConfigurationError("FlaskSignedURLs: call init_app(app) first")
        return self._urls

    @property
    def service(self) -> CacheService:
        """The :class:`CacheService` built by :meth:`init_app`."""
        if self._service is None:
            raise ConfigurationError("FlaskSignedURLs: call init_app(app) first")
        return self._service

    def init_app(self, app: Flask) -> None:
        """Build everything from ``app.config`` and register under ``app.extensions``."""
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError(
                f"sqla_signed_urls is already registered on app {app.name!r}; "
                "call init_app once per app"
            )
        if self.app is not None:
            raise ConfigurationError(
                f"this FlaskSignedURLs already serves app {self.app.name!r}; "
                "create one FlaskSignedURLs per app"
            )
        settings, redis_url = Settings.from_mapping(app.config)
        signer = self._signer if self._signer is not None else _env_signer(app.config)
        urls = SignedURLs(signer, settings=settings, redis=redis_url)
        if self._base is not None:
            urls.install(self._base)
        service = CacheService(urls, session_factory=self._session_factory, model=self._model)
        if self._admin:
            token = self._admin_token or app.config.get("ADMIN_TOKEN") or None
            app.register_blueprint(
                admin_blueprint(service, token=token, url_prefix=self._admin_url_prefix)
            )
        self._urls, self._service, self.app = urls, service, app
        app.extensions[EXTENSION_KEY] = self


def init_app(app: Flask, **options: Any) -> FlaskSignedURLs:
    """``FlaskSignedURLs(app, **options)``: one call for apps without a factory."""
    return FlaskSignedURLs(app, **options)


def _env_signer(config: Mapping[str, Any]) -> Signer:
    """The signer the app's config (over the environment) describes: S3 or OSS."""
    from .signers.env import signer_from_env

    environ = dict(os.environ)
    environ.update(
        {k: str(v) for k, v in config.items() if k.startswith(_STORE_KEYS) and v is not None}
    )
    return signer_from_env(environ)


#: Config keys (and environment variables) that describe the store to sign for.
_STORE_KEYS = ("OSS_", "S3_", "AWS_")
