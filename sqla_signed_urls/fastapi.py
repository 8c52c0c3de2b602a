"""FastAPI integration: the four admin endpoints as an ``APIRouter``, on the async operations.

Needs the ``fastapi`` extra: importing this module without FastAPI raises
:class:`~sqla_signed_urls.ConfigurationError` naming ``pip install "sqla-signed-urls[fastapi]"``.
The rest of the package never imports FastAPI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy.exc import DBAPIError

from ._extras import require

try:  # the `fastapi` extra
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse
except ImportError:
    require("fastapi", "fastapi", "sqla_signed_urls.fastapi")
    raise

from .exceptions import CacheError, ConfigurationError
from .service import CacheService

__all__ = ["admin_router"]

log = logging.getLogger("sqla_signed_urls")

#: Request bodies larger than this are refused (413) without being parsed.
MAX_BODY_BYTES = 16 * 1024
#: Largest ``limit`` one warm request may ask for; use the command line for more.
MAX_WARM_LIMIT = 100_000
#: Largest ``within`` a refresh request may ask for (one week).
MAX_WITHIN = 7 * 24 * 3600

#: Every method the catch-all routes answer (404 or 405) under the prefix.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

#: An endpoint's work: the validated body in, the JSON answer out.
_Operation = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class _Refused(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def admin_router(
    service: CacheService, *, token: str | None = None, prefix: str = "/api/admin/cache"
) -> APIRouter:
    """The four admin endpoints (stats, clear, warm, refresh) behind a bearer token, as the
    Flask blueprint (:func:`sqla_signed_urls.flask.admin_blueprint`) serves them, run with the
    service's awaitable operations::

        service = CacheService(urls, async_session_factory=async_session, model=File)
        app.include_router(admin_router(service, token=os.environ["ADMIN_TOKEN"]))

    ============================  ===========================  ======================
    ``GET  <prefix>/stats``       --                           200, the stats
    ``POST <prefix>/clear``       ``{"file_id": 123}`` or {}   200, ``{"cleared": n}``
    ``POST <prefix>/warm``        ``{"file_type": "avatar"}``  200, ``{"warmed": n}``
    ``POST <prefix>/refresh``     ``{"within": 600}`` or {}    200, ``{"refreshed": n}``
    ============================  ===========================  ======================

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

    @endpoint("POST", "/clear", {"file_id": _file_id})
    async def clear(body: dict[str, Any]) -> dict[str, Any]:
        return {"cleared": await service.aclear_file_url_cache(body.get("file_id"))}

    @endpoint("POST", "/warm", {"file_type": _file_type, "limit": _limit})
    async def warm(body: dict[str, Any]) -> dict[str, Any]:
        limit = body.get("limit", 1000)
        return {"warmed": await service.awarm_file_url_cache(body.get("file_type"), limit=limit)}

    @endpoint("POST", "/refresh", {"within": _within})
    async def refresh(body: dict[str, Any]) -> dict[str, Any]:
        return {"refreshed": await service.arefresh_expired_urls(body.get("within", 600))}

    if prefix:

        async def routing_error(request: Request) -> JSONResponse:
            async def refuse() -> dict[str, Any]:
                path, method = request.url.path, request.method
                if path in allowed:
                    here = allowed[path]
                    raise _Refused(405, f"{method} is not allowed here (allowed: {here})", here)
                raise _Refused(404, f"no admin endpoint at {path}")

            return await _answer(request, expected, refuse)

        for path in ("", "/{rest:path}"):
            router.add_api_route(path, routing_error, methods=_METHODS, include_in_schema=False)
    return router


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
    except _Refused as exc:
        if exc.status == 405:  # the field carries the allowed method
            return _error(405, exc.message, headers={"Allow": exc.field or ""})
        return _error(exc.status, exc.message, field=exc.field)
    except CacheError as exc:
        return _error(503, str(exc))
    except DBAPIError as exc:
        log.error("cache admin: database error: %s", type(exc.orig).__name__)
        return _error(503, f"database unavailable: {_db_message(exc)}")
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
    too_big = _Refused(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise too_big
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _Refused(400, "request body must be a JSON object such as {}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(sorted(fields)) or "none"
        raise _Refused(400, f"unknown field {unknown[0]!r} (allowed: {names})", str(unknown[0]))
    return {name: fields[name](value) for name, value in data.items()}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _whole(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        message = f"{field} must be a whole number from {low} to {high}, got {json.dumps(value)}"
        raise _Refused(400, message, field)
    return value


def _file_id(value: Any) -> int:
    if value is None:
        message = "file_id must be a whole number; leave it out to clear every key"
        raise _Refused(400, message, "file_id")
    return _whole("file_id", value, 0, 2**63 - 1)


def _file_type(value: Any) -> str:
    printable = isinstance(value, str) and all(0x20 <= ord(c) != 0x7F for c in value)
    if not printable or not 0 < len(value) <= 64:
        message = "file_type must be a non-empty string of at most 64 printable characters"
        raise _Refused(400, message, "file_type")
    return str(value)


def _limit(value: Any) -> int:
    return _whole("limit", value, 1, MAX_WARM_LIMIT)


def _within(value: Any) -> int:
    return _whole("within", value, 1, MAX_WITHIN)


def _db_message(exc: DBAPIError) -> str:
    # str(exc) carries the SQL and its parameters; the driver's first line is enough.
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    return f"{type(exc.orig).__name__}: {lines[0] if lines else 'error'}"
