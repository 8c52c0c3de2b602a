"""The admin HTTP API and the Flask extension, through ``app.test_client()``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from werkzeug.exceptions import HTTPException

from sqla_signed_urls import CacheService, ConfigurationError, ObjectKey, SignedURLs
from sqla_signed_urls.flask import FlaskSignedURLs, admin_blueprint, init_app
from sqla_signed_urls.testing import FakeSigner

from ..conftest import REDIS_URL, File, add_files, cache_files

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def service(urls: SignedURLs, db: sessionmaker[Session]) -> CacheService:
    return CacheService(urls, session_factory=db, model=File)


@pytest.fixture
def client(service: CacheService) -> FlaskClient:
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(service, token=TOKEN))
    return app.test_client()


def url_keys(redis_client: Any, key_prefix: str) -> set[str]:
    return {
        k.decode() for k in redis_client.scan_iter(match=key_prefix + "*") if "#" not in k.decode()
    }


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
    client: FlaskClient,
    urls: SignedURLs,
    db: Any,
    redis_client: Any,
    key_prefix: str,
    headers: dict[str, str],
) -> None:
    cache_files(urls, db, add_files(db, "a.png"))
    for method, path in [
        ("GET", "/stats"),
        ("POST", "/clear"),
        ("POST", "/warm"),
        ("POST", "/refresh"),
    ]:
        response = client.open(f"/api/admin/cache{path}", method=method, headers=headers, json={})
        assert response.status_code == 401
        assert "token" in response.get_json()["error"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert len(url_keys(redis_client, key_prefix)) == 1


def test_no_token_configured_refuses_to_build(
    service: CacheService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="ADMIN_TOKEN"):
        admin_blueprint(service)
    with pytest.raises(ConfigurationError, match="ADMIN_TOKEN"):
        admin_blueprint(service, token="  ")


def test_token_from_environment(service: CacheService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "from-the-env-0123")
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(service, url_prefix="/ops/cache"))
    client = app.test_client()
    ok = client.get("/ops/cache/stats", headers={"Authorization": "Bearer from-the-env-0123"})
    assert ok.status_code == 200
    assert client.get("/ops/cache/stats", headers=AUTH).status_code == 401


def test_blueprint_needs_a_service() -> None:
    with pytest.raises(ConfigurationError, match="CacheService"):
        admin_blueprint(object(), token=TOKEN)  # type: ignore[arg-type]


# -- the four endpoints ------------------------------------------------------------------------


def test_stats_endpoint(client: FlaskClient, urls: SignedURLs, db: Any) -> None:
    ids = add_files(db, "a.png", "b.png")
    cache_files(urls, db, ids)
    cache_files(urls, db, ids)

    response = client.get("/api/admin/cache/stats", headers=AUTH)

    assert response.status_code == 200
    body = response.get_json()
    assert body["hits"] == 2 and body["misses"] == 2 and body["hit_ratio"] == 0.5
    assert body["keys"] == 2
    for name in ("signed", "errors", "invalidations", "memory_used_bytes", "redis_db"):
        assert name in body


def test_clear_one_and_all(
    client: FlaskClient, urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str
) -> None:
    ids = add_files(db, "a.png", "b.png", "c.png")
    cache_files(urls, db, ids)

    one = client.post("/api/admin/cache/clear", headers=AUTH, json={"file_id": ids[0]})
    assert (one.status_code, one.get_json()) == (200, {"cleared": 1})
    assert url_keys(redis_client, key_prefix) == {f"{key_prefix}{i}" for i in ids[1:]}

    everything = client.post("/api/admin/cache/clear", headers=AUTH, json={})
    assert (everything.status_code, everything.get_json()) == (200, {"cleared": 2})
    assert url_keys(redis_client, key_prefix) == set()


def test_clear_with_no_body_at_all_clears_everything(
    client: FlaskClient, urls: SignedURLs, db: Any
) -> None:
    cache_files(urls, db, add_files(db, "a.png"))
    response = client.post("/api/admin/cache/clear", headers=AUTH)
    assert response.get_json() == {"cleared": 1}


def test_warm(client: FlaskClient, db: Any, redis_client: Any, key_prefix: str) -> None:
    avatars = add_files(db, "a1.png", "a2.png", file_type="avatar")
    add_files(db, "p.png", file_type="post")

    response = client.post("/api/admin/cache/warm", headers=AUTH, json={"file_type": "avatar"})

    assert (response.status_code, response.get_json()) == (200, {"warmed": 2})
    assert url_keys(redis_client, key_prefix) == {f"{key_prefix}{i}" for i in avatars}
    limited = client.post("/api/admin/cache/warm", headers=AUTH, json={"limit": 1})
    assert limited.get_json() == {"warmed": 1}


def test_refresh(client: FlaskClient, urls: SignedURLs, signer: FakeSigner) -> None:
    import time

    from sqla_signed_urls.cache.base import encode_entry, signer_tag

    now = int(time.time())
    key = f"{urls.settings.key_prefix}5"
    value = encode_entry(
        ("https://files.test/a?sig=old", now + 100 + urls.settings.min_validity, now + 100),
        signer_tag(signer.name),
        "a",
    )
    urls.redis.set(key, value, ex=100)
    urls.redis.zadd(f"{urls.settings.key_prefix}#expiry", {key: now + 100})

    default = client.post("/api/admin/cache/refresh", headers=AUTH)
    assert (default.status_code, default.get_json()) == (200, {"refreshed": 1})
    again = client.post("/api/admin/cache/refresh", headers=AUTH, json={"within": 600})
    assert again.get_json() == {"refreshed": 0}


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
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
        ("/warm", b'{"limit": 0}', "limit"),
        ("/warm", b'{"limit": "10"}', "limit"),
        ("/refresh", b'{"within": 0}', "within"),
        ("/refresh", b'{"within": "600"}', "within"),
        ("/refresh", b'{"within": false}', "within"),
    ],
)
def test_bad_fields_are_400_naming_the_field_and_nothing_happens(
    client: FlaskClient,
    urls: SignedURLs,
    db: Any,
    redis_client: Any,
    key_prefix: str,
    signer: FakeSigner,
    path: str,
    body: bytes,
    field: str,
) -> None:
    cache_files(urls, db, add_files(db, "a.png"))
    calls = len(signer.calls)
    response = client.post(
        f"/api/admin/cache{path}",
        headers={**AUTH, "Content-Type": "application/json"},
        data=body,
    )
    assert response.status_code == 400
    error = response.get_json()
    assert error["field"] == field and field in error["error"]
    assert len(url_keys(redis_client, key_prefix)) == 1
    assert len(signer.calls) == calls


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"x"', b"\xff\xfe", b"NaN"])
def test_malformed_bodies_are_400(
    client: FlaskClient, urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str, body: bytes
) -> None:
    cache_files(urls, db, add_files(db, "a.png"))
    response = client.post(
        "/api/admin/cache/clear",
        headers={**AUTH, "Content-Type": "application/json"},
        data=body,
    )
    assert response.status_code == 400
    assert "JSON" in response.get_json()["error"]
    assert len(url_keys(redis_client, key_prefix)) == 1


def test_oversized_body_is_413(client: FlaskClient) -> None:
    response = client.post(
        "/api/admin/cache/clear",
        headers={**AUTH, "Content-Type": "application/json"},
        data=b'{"file_id": 1' + b" " * 20000 + b"}",
    )
    assert response.status_code == 413


# -- routing errors under the prefix -----------------------------------------------------------


def host_app(service: CacheService | None, **options: Any) -> Flask:
    """An app with a page of its own and, given a service, the admin blueprint."""
    app = Flask(__name__)

    @app.get("/page")
    def page() -> str:
        return "page"

    if service is not None:
        app.register_blueprint(admin_blueprint(service, token=TOKEN), **options)
    return app


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path", ["/nope", "/stats/extra", "/clear/", "", "/"])
def test_unknown_admin_path_is_404_json(client: FlaskClient, method: str, path: str) -> None:
    response = client.open(f"/api/admin/cache{path}", method=method, headers=AUTH)
    assert response.status_code == 404
    assert response.is_json
    assert response.get_json() == {"error": f"no admin endpoint at /api/admin/cache{path}"}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/clear", {"POST", "OPTIONS"}),
        ("GET", "/warm", {"POST", "OPTIONS"}),
        ("GET", "/refresh", {"POST", "OPTIONS"}),
        ("PUT", "/clear", {"POST", "OPTIONS"}),
        ("POST", "/stats", {"GET", "HEAD", "OPTIONS"}),
        ("DELETE", "/stats", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_wrong_method_is_405_json_with_allow(
    client: FlaskClient,
    urls: SignedURLs,
    db: Any,
    redis_client: Any,
    key_prefix: str,
    method: str,
    path: str,
    allowed: set[str],
) -> None:
    cache_files(urls, db, add_files(db, "a.png"))
    response = client.open(f"/api/admin/cache{path}", method=method, headers=AUTH)
    assert response.status_code == 405
    assert response.is_json
    assert response.get_json()["error"].startswith(f"{method} is not allowed")
    assert set(response.headers["Allow"].split(", ")) == allowed
    assert len(url_keys(redis_client, key_prefix)) == 1


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nope"), ("GET", ""), ("GET", "/clear"), ("POST", "/stats")]
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_unknown_path_or_method_without_token_is_the_same_401(
    client: FlaskClient, method: str, path: str, headers: dict[str, str]
) -> None:
    known = client.get("/api/admin/cache/stats", headers=headers)
    response = client.open(f"/api/admin/cache{path}", method=method, headers=headers)
    assert response.status_code == known.status_code == 401
    assert response.get_json() == known.get_json()
    assert response.headers["WWW-Authenticate"] == known.headers["WWW-Authenticate"]
    assert "Allow" not in response.headers


def test_paths_outside_the_prefix_keep_the_apps_html_errors(service: CacheService) -> None:
    plain = host_app(None).test_client()
    client = host_app(service).test_client()
    assert client.get("/api/admin/cache/nope", headers=AUTH).is_json
    assert client.get("/api/admin/cache/clear", headers=AUTH).is_json
    for method, path in [
        ("GET", "/nope"),
        ("GET", "/api/admin/cachex"),
        ("GET", "/api/admin"),
        ("POST", "/page"),
    ]:
        expected = plain.open(path, method=method, headers=AUTH)
        response = client.open(path, method=method, headers=AUTH)
        assert response.status_code == expected.status_code
        assert response.mimetype == expected.mimetype == "text/html"
        assert response.data == expected.data
        assert response.headers.get("Allow") == expected.headers.get("Allow")


@pytest.mark.parametrize("handler_first", [True, False])
@pytest.mark.parametrize("key", [404, 405, HTTPException])
def test_app_error_handlers_still_win_outside_the_prefix(
    service: CacheService, key: int | type[HTTPException], handler_first: bool
) -> None:
    def handler(exc: HTTPException) -> tuple[str, int]:
        return f"app says {exc.code}", exc.code or 500

    app = Flask(__name__)
    app.add_url_rule("/page", "page", lambda: "page")
    if handler_first:
        app.register_error_handler(key, handler)
    app.register_blueprint(admin_blueprint(service, token=TOKEN))
    if not handler_first:
        app.register_error_handler(key, handler)
    client = app.test_client()

    for code, method, path in [(404, "GET", "/nope"), (405, "POST", "/page")]:
        response = client.open(path, method=method, headers=AUTH)
        assert response.status_code == code
        if key in (code, HTTPException):
            assert response.data == f"app says {code}".encode()
        else:
            assert response.mimetype == "text/html"
    for code, path in [(404, "/nope"), (405, "/clear")]:
        response = client.get(f"/api/admin/cache{path}", headers=AUTH)
        assert response.status_code == code
        assert response.is_json


def test_the_prefix_given_at_registration_is_the_one_answered(service: CacheService) -> None:
    app = host_app(service, url_prefix="/ops/cache/")
    app.register_blueprint(
        admin_blueprint(service, token=TOKEN), name="second", url_prefix="/ops/other"
    )
    client = app.test_client()
    assert client.get("/ops/cache/stats", headers=AUTH).status_code == 200
    for prefix in ("/ops/cache", "/ops/other"):
        missing = client.get(f"{prefix}/nope", headers=AUTH)
        assert (missing.status_code, missing.is_json) == (404, True)
        wrong = client.get(f"{prefix}/clear", headers=AUTH)
        assert (wrong.status_code, wrong.is_json) == (405, True)
        assert client.get(f"{prefix}/nope").status_code == 401
    default = client.get("/api/admin/cache/nope", headers=AUTH)
    assert (default.status_code, default.mimetype) == (404, "text/html")

    rootless = host_app(service, url_prefix="").test_client()
    assert rootless.get("/stats", headers=AUTH).status_code == 200
    for method, path in [("GET", "/nope"), ("POST", "/page")]:
        assert rootless.open(path, method=method, headers=AUTH).mimetype == "text/html"


# -- faults ------------------------------------------------------------------------------------


def test_redis_down_is_503_json(make_urls: Any) -> None:
    service = CacheService(make_urls(redis="redis://127.0.0.1:1/0"))
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(service, token=TOKEN))
    client = app.test_client()
    for method, path in [("GET", "/stats"), ("POST", "/clear"), ("POST", "/refresh")]:
        response = client.open(f"/api/admin/cache{path}", method=method, headers=AUTH)
        assert response.status_code == 503
        assert "Redis unavailable" in response.get_json()["error"]


def test_warm_without_a_database_is_501_json(urls: SignedURLs) -> None:
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(CacheService(urls), token=TOKEN))
    response = app.test_client().post("/api/admin/cache/warm", headers=AUTH, json={})
    assert response.status_code == 501
    assert "session_factory" in response.get_json()["error"]


def test_database_down_is_503_without_sql_in_the_answer(urls: SignedURLs, tmp_path: Any) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp_path}/missing/dir/db.sqlite")
    service = CacheService(urls, session_factory=sessionmaker(engine), model=File)
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(service, token=TOKEN))
    response = app.test_client().post("/api/admin/cache/warm", headers=AUTH, json={})
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error.startswith("database unavailable") and "SELECT" not in error
    engine.dispose()


# -- the extension -----------------------------------------------------------------------------


class ExtBase(DeclarativeBase):
    pass


class Attachment(ExtBase):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


@pytest.fixture
def app(key_prefix: str) -> Flask:
    app = Flask(__name__)
    app.config.update(
        FILE_URL_CACHE_TIMEOUT=600,
        FILE_URL_EXPIRES=3600,
        FILE_URL_CACHE_KEY_PREFIX=key_prefix,
        ADMIN_TOKEN=TOKEN,
    )
    if REDIS_URL:
        app.config["REDIS_URL"] = REDIS_URL
    return app


@pytest.fixture
def extensions(redis_client: Any) -> Iterator[list[FlaskSignedURLs]]:
    """Extensions made by a test, closed before ``redis_client`` removes the test's keys."""
    made: list[FlaskSignedURLs] = []
    yield made
    for ext in made:
        if ext.app is not None:
            ext.urls.uninstall()
            ext.urls.close()


def test_extension_reads_app_config_and_registers_itself(
    app: Flask, key_prefix: str, engine: Any, extensions: list[FlaskSignedURLs]
) -> None:
    ExtBase.metadata.create_all(engine)
    try:
        factory = sessionmaker(engine, expire_on_commit=False)
        ext = FlaskSignedURLs(
            signer=FakeSigner(), base=ExtBase, session_factory=factory, model=Attachment
        )
        extensions.append(ext)
        ext.init_app(app)

        assert app.extensions["sqla_signed_urls"] is ext
        settings = ext.urls.settings
        assert (settings.cache_ttl, settings.url_ttl, settings.key_prefix) == (
            600,
            3600,
            key_prefix,
        )
        with factory() as session:
            session.add(Attachment(id=1, object_key="x.png"))
            session.commit()
            attachment = session.get(Attachment, 1)
            assert attachment is not None
            assert getattr(attachment, "url", "").startswith("https://files.test/x.png")
        assert ext.service.get_cache_stats()["keys"] == 1
    finally:
        ExtBase.metadata.drop_all(engine)


def test_extension_refuses_double_registration(
    app: Flask, extensions: list[FlaskSignedURLs]
) -> None:
    ext = init_app(app, signer=FakeSigner())
    extensions.append(ext)
    with pytest.raises(ConfigurationError, match="already registered"):
        FlaskSignedURLs(app, signer=FakeSigner())
    with pytest.raises(ConfigurationError, match="already serves"):
        ext.init_app(Flask("other"))


def test_extension_serves_the_admin_api_with_the_configured_token(
    app: Flask, extensions: list[FlaskSignedURLs]
) -> None:
    ext = FlaskSignedURLs(app, signer=FakeSigner(), admin=True)
    extensions.append(ext)
    client = app.test_client()
    assert client.get("/api/admin/cache/stats", headers=AUTH).status_code == 200
    assert client.get("/api/admin/cache/stats").status_code == 401


def test_extension_bad_config_names_the_setting(
    app: Flask, extensions: list[FlaskSignedURLs]
) -> None:
    app.config["FILE_URL_CACHE_TIMEOUT"] = "soon"
    with pytest.raises(ConfigurationError, match="FILE_URL_CACHE_TIMEOUT"):
        FlaskSignedURLs(app, signer=FakeSigner())
    assert "sqla_signed_urls" not in app.extensions


def test_extension_before_init_app_says_so() -> None:
    with pytest.raises(ConfigurationError, match="init_app"):
        FlaskSignedURLs().urls  # noqa: B018


def test_core_imports_without_flask_or_prometheus() -> None:
    code = (
        "import sys\n"
        "sys.modules['flask'] = None\n"
        "sys.modules['prometheus_client'] = None\n"
        "import sqla_signed_urls, sqla_signed_urls.service, sqla_signed_urls.cli\n"
        "from sqla_signed_urls import CacheService\n"
        "assert 'flask' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
