"""FastAPI integration: the admin endpoints and the cache dashboard as an ``APIRouter``, on the
async operations.

Needs the ``fastapi`` extra: importing this module without FastAPI raises
:class:`~sqla_signed_urls.ConfigurationError` naming ``pip install "sqla-signed-urls[fastapi]"``.
The rest of the package never imports FastAPI.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy.exc import DBAPIError

from ._extras import require

try:  # the `fastapi` extra
    from fastapi import APIRouter, Request
    from fastapi.responses import HTMLResponse, JSONResponse
except ImportError:
    require("fastapi", "fastapi", "sqla_signed_urls.fastapi")
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
from .dashboard import ACTIONS, COOKIE, Answer, Dashboard, PageRequest, adrive
from .exceptions import CacheError, ConfigurationError
from .service import CacheService

__all__ = ["admin_router"]

log = logging.getLogger("sqla_signed_urls")


#: Every method the catch-all routes answer (404 or 405) under the prefix.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

#: An endpoint's work: the validated body in, the JSON answer out.
_Operation = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def admin_router(
    service: CacheService, *, token: str | None = None, prefix: str = "/api/admin/cache"
) -> APIRouter:
    """The admin endpoints (stats, history, clear, warm, refresh) behind a bearer token and
    the cache dashboard, as the Flask blueprint (:func:`sqla_signed_urls.flask.admin_blueprint`)
    serves them, run with the service's awaitable operations::

        service = CacheService(urls, async_session_factory=async_session, model=File)
        app.include_router(admin_router(service, token=os.environ["ADMIN_TOKEN"]))

    ============================  ===========================  ======================
    ``GET  <prefix>/stats``       --                           200, the stats
    ``GET  <prefix>/history``     ``?since=<Unix seconds>``    200, the history points
    ``POST <prefix>/clear``       ``{"file_id": 123}`` or {}   200, ``{"cleared": n}``
    ``POST <prefix>/warm``        ``{"file_type": "avatar"}``  200, ``{"warmed": n}``
    ``POST <prefix>/refresh``     ``{"within": 600}`` or {}    200, ``{"refreshed": n}``
    ``GET  <prefix>/dashboard``   browser sign-in, then HTML   the dashboard page
    ============================  ===========================  ======================

    The dashboard (:mod:`sqla_signed_urls.dashboard`, the same pages as the blueprint's) signs
    a browser in with the token (a form, then a session cookie) and posts its operations with
    a CSRF token; the JSON endpoints take the bearer token only.

    The token is ``token`` or the ``ADMIN_TOKEN`` environment variable; without one this
    raises :class:`~sqla_signed_urls.ConfigurationError`, so the API is never open by default.
    A missing or wrong ``Authorization: Bearer <token>`` gives 401 before the body is read; a
    malformed body, a wrong type or an unknown field gives 400 naming the field, and nothing
    runs; a body over 16 KiB gives 413. Redis or the database being down gives 503, a service
    without what the operation needs 501. Every error answer is JSON ``{"error": ...}``.

    Unknown paths and wrong methods under the prefix get JSON 404 and 405 (with ``Allow``),
    but only with the token; without it they get the same 401 as the endpoints. The router
    answers them with catch-all routes under its prefix (include it with no further prefix,
    after any route of your own under the same prefix); with ``prefix=""`` it has none and
    leaves every routing error to the app.
    """
    if not isinstance(service, CacheService):
        raise ConfigurationError(
            f"admin_router(service=...): expected a CacheService, got {type(service).__name__}"
        )
    if token is None:
        token = os.environ.get("ADMIN_TOKEN")
    if not isinstance(token, str) or not token.strip():
        raise ConfigurationError(
            "admin_router: no admin token; pass token=... or set ADMIN_TOKEN "
            "(the admin API is never served without one)"
        )
    prefix = prefix.rstrip("/")
    expected = hashlib.sha256(token.encode()).digest()
    router = APIRouter(prefix=prefix)
    allowed: dict[str, str] = {}

    def endpoint(
        method: str, path: str, fields: Mapping[str, Callable[[Any], Any]]
    ) -> Callable[[_Operation], _Operation]:
        allowed[prefix + path] = method

        def register(operation: _Operation) -> _Operation:
            async def answer(request: Request) -> JSONResponse:
                async def run() -> dict[str, Any]:
                    return await operation(await _body(request, fields))

                return await _answer(request, expected, run)

            answer.__name__ = operation.__name__
            router.add_api_route(path, answer, methods=[method], include_in_schema=False)
            return operation

        return register

    @endpoint("GET", "/stats", {})
    async def stats(body: dict[str, Any]) -> dict[str, Any]:
        return await service.aget_cache_stats()

    async def history(request: Request) -> JSONResponse:
        async def run() -> dict[str, Any]:
            since = history_query(dict(request.query_params))
            interval = service.urls.settings.history_interval
            return {"interval": interval, "points": await service.aget_cache_history(since)}

        return await _answer(request, expected, run)

    allowed[prefix + "/history"] = "GET"
    router.add_api_route("/history", history, methods=["GET"], include_in_schema=False)

    dashboard = Dashboard(token, settings=service.urls.settings)
    call = _caller(service)

    def page(action: str) -> Callable[[Request], Awaitable[HTMLResponse]]:
        suffix = "/dashboard" + (f"/{action}" if action else "")

        async def answer(request: Request) -> HTMLResponse:
            path = request.url.path
            base = path[: -len(suffix)] if path.endswith(suffix) else path
            body = await _limited_body(request) if request.method == "POST" else b""
            page_request = PageRequest(
                method=request.method,
                action=action,
                base=base,
                query=dict(request.query_params),
                cookie=request.cookies.get(COOKIE),
                body=body,
                secure=request.url.scheme == "https",
            )
            return _html(await adrive(dashboard.handle(page_request), call, _FAULTS))

        answer.__name__ = "dashboard_" + action.replace("-", "_") if action else "dashboard"
        return answer

    allowed[prefix + "/dashboard"] = "GET"
    router.add_api_route("/dashboard", page(""), methods=["GET"], include_in_schema=False)
    for action in ACTIONS:
        allowed[f"{prefix}/dashboard/{action}"] = "POST"
        router.add_api_route(
            f"/dashboard/{action}", page(action), methods=["POST"], include_in_schema=False
        )

    @endpoint("POST", "/clear", fields("file_id"))
    async def clear(body: dict[str, Any]) -> dict[str, Any]:
        return {"cleared": await service.aclear_file_url_cache(body.get("file_id"))}

    @endpoint("POST", "/warm", fields("file_type", "limit"))
    async def warm(body: dict[str, Any]) -> dict[str, Any]:
        limit = body.get("limit", 1000)
        return {"warmed": await service.awarm_file_url_cache(body.get("file_type"), limit=limit)}

    @endpoint("POST", "/refresh", fields("within"))
    async def refresh(body: dict[str, Any]) -> dict[str, Any]:
        return {"refreshed": await service.arefresh_expired_urls(body.get("within", 600))}

    if prefix:

        async def routing_error(request: Request) -> JSONResponse:
            async def refuse() -> dict[str, Any]:
                path, method = request.url.path, request.method
                if path in allowed:
                    here = allowed[path]
                    raise Refused(
                        f"{method} is not allowed here (allowed: {here})", field=here, status=405
                    )
                raise Refused(f"no admin endpoint at {path}", status=404)

            return await _answer(request, expected, refuse)

        for path in ("", "/{rest:path}"):
            router.add_api_route(path, routing_error, methods=_METHODS, include_in_schema=False)
    return router


#: What the dashboard reports instead of failing: Redis, the database, a missing setup.
_FAULTS: tuple[type[Exception], ...] = (CacheError, DBAPIError, ConfigurationError)


def _caller(service: CacheService) -> Callable[[str, tuple[Any, ...]], Awaitable[Any]]:
    """Answers the dashboard's needs with the service's awaitable operations."""

    async def call(need: str, args: tuple[Any, ...]) -> Any:
        if need == "stats":
            return await service.aget_cache_stats()
        if need == "history":
            since, limit = args
            return await service.aget_cache_history(since, limit=limit)
        if need == "histogram":
            return await service.aget_expiry_histogram()
        if need == "breaker":
            return service.urls.redis_available
        if need == "clear":
            return await service.aclear_file_url_cache(*args)
        if need == "warm":
            file_type, limit = args
            return await service.awarm_file_url_cache(file_type, limit=limit)
        if need == "refresh":
            return await service.arefresh_expired_urls(*args)
        raise LookupError(need)

    return call


def _html(answer: Answer) -> HTMLResponse:
    response = HTMLResponse(answer.body, status_code=answer.status)
    for name, value in answer.headers:
        if name == "Content-Type":
            response.headers[name] = value
        else:
            response.headers.append(name, value)
    return response


async def _limited_body(request: Request) -> bytes | None:
    """The request body, or ``None`` when it is larger than the admin API accepts."""
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            return None
    return raw


async def _answer(
    request: Request, expected: bytes, run: Callable[[], Awaitable[dict[str, Any]]]
) -> JSONResponse:
    """Authenticate first, then run; every failure becomes a JSON error answer."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    # Equal-length digests make the comparison constant-time whatever was sent.
    digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
    if not (given and hmac.compare_digest(digest, expected)):
        return _error(
            401,
            "missing or wrong admin token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="cache admin"'},
        )
    try:
        return JSONResponse(await run())
    except Refused as exc:
        if exc.status == 405:  # the field carries the allowed method
            return _error(405, exc.message, headers={"Allow": exc.field or ""})
        return _error(exc.status, exc.message, field=exc.field)
    except CacheError as exc:
        return _error(503, str(exc))
    except DBAPIError as exc:
        log.error("cache admin: database error: %s", type(exc.orig).__name__)
        return _error(503, f"database unavailable: {db_message(exc)}")
    except ConfigurationError as exc:
        return _error(501, str(exc))


def _error(
    status: int, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    payload: dict[str, Any] = {"error": message}
    if field is not None:
        payload["field"] = field
    return JSONResponse(payload, status_code=status, headers=headers)


async def _body(request: Request, fields: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """The JSON object in the request body (empty body: ``{}``), every field validated."""
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big()
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise too_big()
    return parse_body(raw, fields)
