"""The admin HTTP API as a FastAPI router, through ``httpx.AsyncClient`` on the ASGI app: the
same endpoints, bodies, status codes and JSON as the Flask blueprint, on the async operations.

Each test runs its own event loop (``asyncio.run``) on the world of ``test_service_async``
(fakeredis + aiosqlite, or a real Redis and PostgreSQL when ``REDIS_URL`` / ``DATABASE_URL``
are set).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from sqla_signed_urls import CacheService, ConfigurationError, SignedURLs
from sqla_signed_urls.fastapi import admin_router

from ..helpers.entries import put_entry
from .test_service_async import Doc, World, world

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}

Body = Callable[[World, httpx.AsyncClient], Awaitable[None]]


def serve(tmp_path: Path, body: Body, make_app: Callable[[World], FastAPI] | None = None) -> None:
    """Run ``body`` against an app serving the admin router on the world's service."""

    def default(w: World) -> FastAPI:
        app = FastAPI()
        app.include_router(admin_router(w.service(), token=TOKEN))
        return app

    async def main() -> None:
        async with world(tmp_path) as w:
            app = (make_app or default)(w)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
                await body(w, c)

    asyncio.run(main())


async def cache(w: World, *keys: str, file_type: str = "attachment") -> list[int]:
    ids = w.add(*((key, file_type, i) for i, key in enumerate(keys)))
    await w.service().awarm_file_url_cache()
    return ids


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_wrong_token_is_401_json_and_does_nothing(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        await cache(w, "a.png")
        for method, path in [
            ("GET", "/stats"),
            ("POST", "/clear"),
            ("POST", "/warm"),
            ("POST", "/refresh"),
        ]:
            response = await client.request(
                method, f"/api/admin/cache{path}", headers=headers, json={}
            )
            assert response.status_code == 401
            assert "token" in response.json()["error"]
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert len(w.cached()) == 1

    serve(tmp_path, body)


def test_no_token_configured_refuses_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)

    async def body(w: World, client: httpx.AsyncClient) -> None:
        with pytest.raises(ConfigurationError, match="ADMIN_TOKEN"):
            admin_router(w.service())
        with pytest.raises(ConfigurationError, match="ADMIN_TOKEN"):
            admin_router(w.service(), token="  ")

    serve(tmp_path, body)


def test_token_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "from-the-env-0123")

    def make_app(w: World) -> FastAPI:
        app = FastAPI()
        app.include_router(admin_router(w.service(), prefix="/ops/cache"))
        return app

    async def body(w: World, client: httpx.AsyncClient) -> None:
        ok = await client.get(
            "/ops/cache/stats", headers={"Authorization": "Bearer from-the-env-0123"}
        )
        assert ok.status_code == 200
        assert (await client.get("/ops/cache/stats", headers=AUTH)).status_code == 401

    serve(tmp_path, body, make_app)


def test_router_needs_a_service() -> None:
    with pytest.raises(ConfigurationError, match="CacheService"):
        admin_router(object(), token=TOKEN)  # type: ignore[arg-type]


# -- the four endpoints ------------------------------------------------------------------------


def test_stats_endpoint(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        ids = w.add(("a.png", "img", 1), ("b.png", "img", 2))
        async with w.asessions() as session:
            docs = [await session.get(Doc, i) for i in ids]
            await w.urls.aresolve(docs)
            await w.urls.aresolve(docs)

        response = await client.get("/api/admin/cache/stats", headers=AUTH)

        assert response.status_code == 200
        stats = response.json()
        assert stats["hits"] == 2 and stats["misses"] == 2 and stats["hit_ratio"] == 0.5
        assert stats["keys"] == 2
        for name in ("signed", "errors", "invalidations", "memory_used_bytes", "redis_db"):
            assert name in stats

    serve(tmp_path, body)


def test_clear_one_and_all(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        ids = await cache(w, "a.png", "b.png", "c.png")

        one = await client.post("/api/admin/cache/clear", headers=AUTH, json={"file_id": ids[0]})
        assert (one.status_code, one.json()) == (200, {"cleared": 1})
        assert set(w.cached()) == {f"{w.prefix}{i}" for i in ids[1:]}

        everything = await client.post("/api/admin/cache/clear", headers=AUTH, json={})
        assert (everything.status_code, everything.json()) == (200, {"cleared": 2})
        assert w.cached() == {}

    serve(tmp_path, body)


def test_clear_with_no_body_at_all_clears_everything(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        await cache(w, "a.png")
        response = await client.post("/api/admin/cache/clear", headers=AUTH)
        assert response.json() == {"cleared": 1}

    serve(tmp_path, body)


def test_warm(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        avatars = w.add(("a1.png", "avatar", 1), ("a2.png", "avatar", 2))
        w.add(("p.png", "post", 3))

        response = await client.post(
            "/api/admin/cache/warm", headers=AUTH, json={"file_type": "avatar"}
        )

        assert (response.status_code, response.json()) == (200, {"warmed": 2})
        assert set(w.cached()) == {f"{w.prefix}{i}" for i in avatars}
        limited = await client.post("/api/admin/cache/warm", headers=AUTH, json={"limit": 1})
        assert limited.json() == {"warmed": 1}

    serve(tmp_path, body)


def test_refresh(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        put_entry(w.urls, f"{w.prefix}5", "a", cache_left=100)

        default = await client.post("/api/admin/cache/refresh", headers=AUTH)
        assert (default.status_code, default.json()) == (200, {"refreshed": 1})
        again = await client.post("/api/admin/cache/refresh", headers=AUTH, json={"within": 600})
        assert again.json() == {"refreshed": 0}

    serve(tmp_path, body)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "data", "field"),
    [
        ("/clear", b'{"file_id": "abc"}', "file_id"),
        ("/clear", b'{"file_id": -1}', "file_id"),
        ("/clear", b'{"file_id": true}', "file_id"),
        ("/clear", b'{"file_id": 1.5}', "file_id"),
        ("/clear", b'{"file_id": null}', "file_id"),
        ("/clear", b'{"file_id": [1]}', "file_id"),
        ("/clear", b'{"fileid": 1}', "fileid"),
        ("/clear", b'{"file_id": 1, "all": true}', "all"),
        ("/warm", b'{"file_type": 5}', "file_type"),
        ("/warm", b'{"file_type": ""}', "file_type"),
        ("/warm", b'{"file_type": "a\\u0007b"}', "file_type"),
        ("/warm", b'{"limit": 0}', "limit"),
        ("/warm", b'{"limit": "10"}', "limit"),
        ("/refresh", b'{"within": 0}', "within"),
        ("/refresh", b'{"within": "600"}', "within"),
        ("/refresh", b'{"within": false}', "within"),
        ("/stats", b'{"x": 1}', "x"),
    ],
)
def test_bad_fields_are_400_naming_the_field_and_nothing_happens(
    tmp_path: Path, path: str, data: bytes, field: str
) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        await cache(w, "a.png")
        calls = len(w.signer.calls)
        method = "GET" if path == "/stats" else "POST"
        response = await client.request(
            method, f"/api/admin/cache{path}", headers=JSON, content=data
        )
        assert response.status_code == 400
        error = response.json()
        assert error["field"] == field and field in error["error"]
        assert len(w.cached()) == 1
        assert len(w.signer.calls) == calls

    serve(tmp_path, body)


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'"x"', b"\xff\xfe", b"NaN"])
def test_malformed_bodies_are_400(tmp_path: Path, data: bytes) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        await cache(w, "a.png")
        response = await client.post("/api/admin/cache/clear", headers=JSON, content=data)
        assert response.status_code == 400
        assert "JSON" in response.json()["error"]
        assert len(w.cached()) == 1

    serve(tmp_path, body)


def test_oversized_body_is_413(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        data = b'{"file_id": 1' + b" " * 20000 + b"}"
        response = await client.post("/api/admin/cache/clear", headers=JSON, content=data)
        assert response.status_code == 413

        async def chunks() -> Any:  # no Content-Length: the stream itself is cut off
            for _ in range(20):
                yield b" " * 1000

        streamed = await client.post("/api/admin/cache/clear", headers=JSON, content=chunks())
        assert streamed.status_code == 413

    serve(tmp_path, body)


# -- routing errors under the prefix -----------------------------------------------------------


def host_app(w: World, **options: Any) -> FastAPI:
    """An app with a page of its own and the admin router."""
    app = FastAPI()

    @app.get("/page")
    async def page() -> str:
        return "page"

    app.include_router(admin_router(w.service(), token=TOKEN, **options))
    return app


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path", ["/nope", "/stats/extra", "/clear/", "", "/"])
def test_unknown_admin_path_is_404_json(tmp_path: Path, method: str, path: str) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        response = await client.request(method, f"/api/admin/cache{path}", headers=AUTH)
        assert response.status_code == 404
        assert response.json() == {"error": f"no admin endpoint at /api/admin/cache{path}"}

    serve(tmp_path, body)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/clear", "POST"),
        ("GET", "/warm", "POST"),
        ("GET", "/refresh", "POST"),
        ("PUT", "/clear", "POST"),
        ("POST", "/stats", "GET"),
        ("DELETE", "/stats", "GET"),
    ],
)
def test_wrong_method_is_405_json_with_allow(
    tmp_path: Path, method: str, path: str, allowed: str
) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        await cache(w, "a.png")
        response = await client.request(method, f"/api/admin/cache{path}", headers=AUTH)
        assert response.status_code == 405
        assert response.json()["error"].startswith(f"{method} is not allowed")
        assert response.headers["Allow"] == allowed
        assert len(w.cached()) == 1

    serve(tmp_path, body)


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nope"), ("GET", ""), ("GET", "/clear"), ("POST", "/stats")]
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_unknown_path_or_method_without_token_is_the_same_401(
    tmp_path: Path, method: str, path: str, headers: dict[str, str]
) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        known = await client.get("/api/admin/cache/stats", headers=headers)
        response = await client.request(method, f"/api/admin/cache{path}", headers=headers)
        assert response.status_code == known.status_code == 401
        assert response.json() == known.json()
        assert response.headers["WWW-Authenticate"] == known.headers["WWW-Authenticate"]
        assert "Allow" not in response.headers

    serve(tmp_path, body)


def test_paths_outside_the_prefix_keep_the_apps_errors(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        assert (await client.get("/api/admin/cache/nope", headers=AUTH)).json()["error"]
        for method, path, status in [
            ("GET", "/nope", 404),
            ("GET", "/api/admin/cachex", 404),
            ("GET", "/api/admin", 404),
            ("POST", "/page", 405),
        ]:
            response = await client.request(method, path, headers=AUTH)
            assert response.status_code == status
            assert "error" not in response.json()  # FastAPI's own {"detail": ...}
        assert (await client.get("/page")).json() == "page"

    serve(tmp_path, body, host_app)


def test_router_without_a_prefix_leaves_routing_errors_to_the_app(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        assert (await client.get("/stats", headers=AUTH)).status_code == 200
        response = await client.get("/nope", headers=AUTH)
        assert response.status_code == 404 and "error" not in response.json()

    serve(tmp_path, body, lambda w: host_app(w, prefix=""))


# -- faults ------------------------------------------------------------------------------------


def test_redis_down_is_503_json(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        urls = SignedURLs(
            w.signer, redis=w.sync, async_redis="redis://127.0.0.1:1/0", key_prefix=w.prefix
        )
        app = FastAPI()
        app.include_router(admin_router(CacheService(urls), token=TOKEN))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
                for method, path in [("GET", "/stats"), ("POST", "/clear"), ("POST", "/refresh")]:
                    response = await c.request(method, f"/api/admin/cache{path}", headers=AUTH)
                    assert response.status_code == 503
                    assert "Redis unavailable" in response.json()["error"]
        finally:
            await urls.aclose()

    serve(tmp_path, body)


def test_warm_without_an_async_database_is_501_json(tmp_path: Path) -> None:
    def make_app(w: World) -> FastAPI:
        app = FastAPI()
        app.include_router(admin_router(CacheService(w.urls, model=Doc), token=TOKEN))
        return app

    async def body(w: World, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/admin/cache/warm", headers=AUTH, json={})
        assert response.status_code == 501
        assert "async_session_factory" in response.json()["error"]

    serve(tmp_path, body, make_app)


def test_database_down_is_503_without_sql_in_the_answer(tmp_path: Path) -> None:
    async def body(w: World, client: httpx.AsyncClient) -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/db.sqlite")
        service = CacheService(w.urls, async_session_factory=async_sessionmaker(engine), model=Doc)
        app = FastAPI()
        app.include_router(admin_router(service, token=TOKEN))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
                response = await c.post("/api/admin/cache/warm", headers=AUTH, json={})
            assert response.status_code == 503
            error = response.json()["error"]
            assert error.startswith("database unavailable") and "SELECT" not in error
        finally:
            await engine.dispose()

    serve(tmp_path, body)


# -- the extra ---------------------------------------------------------------------------------


def test_module_without_fastapi_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"
        "import sqla_signed_urls, sqla_signed_urls.service\n"
        "from sqla_signed_urls import ConfigurationError\n"
        "try:\n"
        "    import sqla_signed_urls.fastapi\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "sqla-signed-urls[fastapi]"' in result.stdout


def test_core_never_imports_fastapi() -> None:
    code = (
        "import sys\n"
        "import sqla_signed_urls, sqla_signed_urls.service, sqla_signed_urls.flask\n"
        "assert 'fastapi' not in sys.modules, 'fastapi imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
