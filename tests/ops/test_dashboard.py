"""The cache dashboard behind the admin blueprint (Flask test client) and the admin router
(FastAPI, through httpx): browser sign-in, the page and its charts, the operations with their
confirmation step, CSRF, sign-out, and what it costs in Redis.

Runs on fakeredis and SQLite, or on the real servers with ``REDIS_URL`` / ``DATABASE_URL``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import CacheService, SignedURLs, dashboard
from sqla_signed_urls.flask import admin_blueprint
from sqla_signed_urls.history import encode_point
from sqla_signed_urls.testing import CountingRedis

from ..conftest import REDIS_URL, File, add_files, cache_files
from ..helpers.entries import put_entry
from ..log_hygiene_plugin import register_secret
from .test_service_async import World, world

TOKEN = "s3cret-admin-token"
register_secret(TOKEN)  # a log record holding it fails the run
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAGE = "/api/admin/cache/dashboard"


@pytest.fixture
def service(urls: SignedURLs, db: sessionmaker[Session]) -> CacheService:
    return CacheService(urls, session_factory=db, model=File)


@pytest.fixture
def client(service: CacheService) -> FlaskClient:
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(service, token=TOKEN))
    return app.test_client()


def url_keys(redis_client: Any, key_prefix: str) -> set[str]:
    keys = (k.decode() for k in redis_client.scan_iter(match=key_prefix + "*"))
    return {k for k in keys if "#" not in k}


def signed_in(client: FlaskClient) -> str:
    """Sign the test client in; return the CSRF token of its forms."""
    response = client.post(f"{PAGE}/sign-in", data={"token": TOKEN})
    assert response.status_code == 303, response.text
    return csrf_of(client.get(PAGE).text)


def cookieless(client: FlaskClient) -> FlaskClient:
    """A client of the same app that sends only the cookies a test gives it."""
    return client.application.test_client(use_cookies=False)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


def message(page: str) -> str:
    found = re.search(r'id="(?:message|result|question)">([^<]*)<', page)
    assert found, "no message in the page"
    return found.group(1).replace("&#x27;", "'")


def chart(page: str, name: str) -> str:
    found = re.search(rf'<svg [^>]*data-chart="{name}".*?</svg>', page, re.S)
    assert found, f"no {name} chart"
    return found.group(0)


def coordinates(page: str, name: str, series: str) -> int:
    """How many points the chart draws for a series (over all its segments)."""
    polylines = re.findall(rf'data-series="{series}" points="([^"]*)"', chart(page, name))
    return sum(len(points.split()) for points in polylines)


def cards(page: str) -> dict[str, str]:
    """The headline figures: card name -> value shown."""
    found = re.findall(r'id="card-([a-z-]+)"><h3>[^<]*</h3><p class="value">([^<]*)<', page)
    return dict(found)


def table_rows(page: str, name: str) -> int:
    found = re.search(rf'<table id="{name}-table">.*?<tbody>(.*?)</tbody>', page, re.S)
    return len(re.findall(r"<tr>", found.group(1))) if found else 0


def fill_history(urls: SignedURLs, minutes: int, *, step: int = 60) -> list[int]:
    """``minutes`` points, one a minute, ending at the current minute: 95 hits, 5 misses,
    4 signings and 2 invalidations a minute; the fleet counters are the last point's."""
    now = int(time.time()) // step * step
    times = [now - step * (minutes - 1 - i) for i in range(minutes)]
    last: dict[str, int] = {}
    for i, at in enumerate(times):
        last = {
            "hits": 95 * i,
            "misses": 5 * i,
            "signed": 4 * i,
            "invalidations": 2 * i,
            "keys": 100 + i,
            "memory_used_bytes": 2_000_000 + 1000 * i,
        }
        urls.store.append_history(at, encode_point(at, last), 1440)
    have = urls.store.read_counters()
    urls.store.add_counters(
        {k: v - have.get(k, 0) for k, v in last.items() if k in ("hits", "misses", "signed")}
    )
    return times


# -- signing in ---------------------------------------------------------------------------------


def test_a_browser_without_a_session_gets_the_sign_in_form(client: FlaskClient) -> None:
    response = client.get(PAGE)

    assert response.status_code == 401
    assert response.mimetype == "text/html"
    page = response.text
    assert f'<form method="post" action="{PAGE}/sign-in" id="sign-in">' in page
    assert 'type="password" id="token" name="token"' in page
    assert "Set-Cookie" not in response.headers
    assert "<script" not in page and "url(" not in page
    policy = response.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    assert "form-action 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("given", ["", "wrong", TOKEN + "x", TOKEN[:-1], f"Bearer {TOKEN}"])
def test_a_wrong_token_signs_nobody_in(client: FlaskClient, given: str) -> None:
    response = client.post(f"{PAGE}/sign-in", data={"token": given})

    assert response.status_code == 401
    assert "Set-Cookie" not in response.headers
    assert message(response.text) == "Wrong admin token: not signed in."
    assert client.get(PAGE).status_code == 401


def test_the_right_token_opens_an_httponly_strict_session(client: FlaskClient) -> None:
    response = client.post(f"{PAGE}/sign-in", data={"token": TOKEN})

    assert response.status_code == 303
    assert response.headers["Location"] == PAGE
    (cookie,) = response.headers.getlist("Set-Cookie")
    name, _, rest = cookie.partition("=")
    value, *attributes = rest.split("; ")
    assert name == dashboard.COOKIE
    assert TOKEN not in value
    assert set(attributes) == {
        f"Max-Age={8 * 3600}",
        f"Path={PAGE}",
        "HttpOnly",
        "SameSite=Strict",
    }
    page = client.get(PAGE)
    assert page.status_code == 200
    assert 'id="sign-out"' in page.text


def test_under_https_the_cookie_is_secure(client: FlaskClient) -> None:
    response = client.post(
        f"{PAGE}/sign-in", data={"token": TOKEN}, base_url="https://admin.example"
    )
    assert response.status_code == 303
    assert response.headers["Set-Cookie"].endswith("; Secure")


def test_a_forged_expired_or_missing_session_changes_nothing(
    client: FlaskClient,
    urls: SignedURLs,
    db: Any,
    redis_client: Any,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = add_files(db, "a.png", "b.png")
    cache_files(urls, db, ids)
    csrf = signed_in(client)
    cookie = client.get_cookie(dashboard.COOKIE, path=PAGE)
    assert cookie is not None
    value = cookie.value
    client.delete_cookie(dashboard.COOKIE, path=PAGE)
    form = {"csrf": csrf, "file_id": str(ids[0]), "confirm": "yes"}

    missing = client.post(f"{PAGE}/clear", data=form)
    expires, ident, mac = value.split(".")
    forgeries = [
        f"{int(expires) + 3600}.{ident}.{mac}",  # a longer session
        f"{expires}.{ident}x.{mac}",
        f"{expires}.{ident}.{mac[:-2]}AA",
        "garbage",
    ]
    plain = cookieless(client)
    forged = [
        plain.post(f"{PAGE}/clear", data=form, headers={"Cookie": f"{dashboard.COOKIE}={v}"})
        for v in forgeries
    ]
    monkeypatch.setattr(dashboard, "SESSION_SECONDS", 1)
    client.post(f"{PAGE}/sign-in", data={"token": TOKEN})
    short = client.get_cookie(dashboard.COOKIE, path=PAGE)
    assert short is not None
    time.sleep(1.1)
    expired = plain.post(
        f"{PAGE}/clear", data=form, headers={"Cookie": f"{dashboard.COOKIE}={short.value}"}
    )

    assert missing.status_code == 401
    assert message(missing.text) == "Not signed in (sign in first): nothing was changed."
    for response in [*forged, expired]:
        assert response.status_code == 401
        assert message(response.text) == (
            "Not signed in (your session has ended or is not valid): nothing was changed."
        )
        assert 'id="sign-in"' in response.text
    assert len(url_keys(redis_client, key_prefix)) == 2


def test_a_missing_or_wrong_csrf_token_is_403_and_changes_nothing(
    client: FlaskClient,
    service: CacheService,
    urls: SignedURLs,
    db: Any,
    redis_client: Any,
    key_prefix: str,
) -> None:
    ids = add_files(db, "a.png")
    cache_files(urls, db, ids)
    other = Flask(__name__)
    other.register_blueprint(admin_blueprint(service, token=TOKEN))
    someone_else = signed_in(other.test_client())  # a token of another session
    signed_in(client)

    for csrf in (None, "", "wrong", someone_else):
        form = {"file_id": str(ids[0]), "confirm": "yes"}
        if csrf is not None:
            form["csrf"] = csrf
        response = client.post(f"{PAGE}/clear", data=form)
        assert response.status_code == 403
        assert message(response.text).startswith(
            "The form's CSRF token is missing or wrong: nothing was changed."
        )
    assert client.post(f"{PAGE}/sign-out", data={}).status_code == 403
    assert client.get(PAGE).status_code == 200, "still signed in"
    assert len(url_keys(redis_client, key_prefix)) == 1


def test_signing_out_ends_the_browser_session(client: FlaskClient) -> None:
    csrf = signed_in(client)

    response = client.post(f"{PAGE}/sign-out", data={"csrf": csrf})

    assert response.status_code == 200
    assert message(response.text) == "Signed out."
    assert response.headers["Set-Cookie"].startswith(f"{dashboard.COOKIE}=; Max-Age=0;")
    assert client.get_cookie(dashboard.COOKIE, path=PAGE) is None
    assert client.get(PAGE).status_code == 401
    refused = client.post(f"{PAGE}/clear", data={"csrf": csrf, "confirm": "yes"})
    assert refused.status_code == 401


def test_the_json_api_takes_the_bearer_token_only(client: FlaskClient) -> None:
    signed_in(client)
    cookie = client.get_cookie(dashboard.COOKIE, path=PAGE)
    assert cookie is not None
    session = {"Cookie": f"{dashboard.COOKIE}={cookie.value}"}
    plain = cookieless(client)
    assert plain.get(PAGE, headers=session).status_code == 200, "the cookie opens the page"
    for method, path in [("GET", "/stats"), ("GET", "/history"), ("POST", "/clear")]:
        response = plain.open(f"/api/admin/cache{path}", method=method, headers=session)
        assert response.status_code == 401
        assert response.is_json


# -- the page -----------------------------------------------------------------------------------


def test_the_page_shows_the_figures_against_the_targets_and_charts_every_point(
    client: FlaskClient, urls: SignedURLs, key_prefix: str
) -> None:
    times = fill_history(urls, 30)
    for i, left in enumerate((100, 400, 1000, 2000, 2650)):
        put_entry(urls, f"{key_prefix}{i + 1}", f"k{i}", cache_left=left)
    signed_in(client)

    response = client.get(PAGE)

    assert response.status_code == 200
    page = response.text
    assert cards(page) == {
        "hit-ratio": "95.0%",
        "signer-avoided": "96.0%",
        "keys": "5",
        "memory": "n/a" if not REDIS_URL else cards(page)["memory"],
        "errors": "0",
        "breaker": "closed",
    }
    assert 'class="card ok" id="card-hit-ratio"' in page
    assert "target above 80%: meets the target" in page
    assert "target above 90%: meets the target" in page
    # one point per history point; rates start at the second point
    assert coordinates(page, "keys", "keys") == len(times) == table_rows(page, "keys")
    assert coordinates(page, "memory", "memory_used_bytes") == len(times)
    for series in ("hit_ratio",):
        assert coordinates(page, "hit-ratio", series) == len(times) - 1
    for series in ("hits", "misses", "signed"):
        assert coordinates(page, "traffic", series) == len(times) - 1
    assert coordinates(page, "invalidations", "invalidations") == len(times) - 1
    assert table_rows(page, "hit-ratio") == len(times) - 1
    for name in ("hit-ratio", "traffic", "invalidations", "faults", "keys", "memory", "expiry"):
        svg = chart(page, name)
        assert f'role="img" aria-labelledby="{name}-title {name}-desc"' in svg
        assert f'<title id="{name}-title">' in svg and f'<desc id="{name}-desc">' in svg
        assert 'class="axis-label"' in svg
    assert ">target 80%</text>" in chart(page, "hit-ratio")
    assert ">time (UTC)</text>" in chart(page, "traffic")
    bars = re.findall(r'class="bar( soon)?" [^>]*data-keys="(\d+)"', chart(page, "expiry"))
    assert [int(keys) for _, keys in bars] == [1, 1, 0, 1, 0, 0, 1, 0, 1, 0]
    assert [bool(soon) for soon, _ in bars] == [True, True] + [False] * 8
    # nothing from the network: no scripts, fonts, stylesheets or images
    assert not re.search(r"<script|<link|<img|@import|url\(|(src|href)=\"(https?:)?//", page)
    assert TOKEN not in page


def test_the_24_hour_window_shows_what_the_hour_leaves_out(
    client: FlaskClient, urls: SignedURLs
) -> None:
    times = fill_history(urls, 90 * 60 // 60 // 3, step=180)  # 30 points, 90 minutes
    signed_in(client)

    hour = client.get(PAGE).text
    day = client.get(f"{PAGE}?window=24h").text

    in_hour = [t for t in times if t >= time.time() - 3600]
    assert coordinates(hour, "keys", "keys") == len(in_hour) < len(times)
    assert coordinates(day, "keys", "keys") == len(times)
    assert f'href="{PAGE}?window=24h" aria-current="page"' in day
    assert f'href="{PAGE}?window=1h" aria-current="page"' in hour
    assert client.get(f"{PAGE}?window=forever").status_code == 200


def test_a_full_day_is_drawn_in_at_most_480_steps_with_the_same_figures(
    client: FlaskClient, urls: SignedURLs
) -> None:
    times = fill_history(urls, 1440)
    signed_in(client)

    day = client.get(f"{PAGE}?window=24h").text

    assert coordinates(day, "keys", "keys") == 480 == table_rows(day, "keys")
    assert coordinates(day, "traffic", "hits") <= 480
    rows = re.findall(r"<tr><th[^>]*>[^<]*</th><td>([^<]*)</td>", table_of(day, "traffic"))
    assert set(rows) == {"95"}, "merged minutes keep the per-minute rate"
    assert len(times) == 1440


def table_of(page: str, name: str) -> str:
    found = re.search(rf'<table id="{name}-table">.*?</table>', page, re.S)
    assert found, f"no table for {name}"
    return found.group(0)


def test_without_history_the_page_says_so(client: FlaskClient) -> None:
    signed_in(client)
    page = client.get(PAGE).text
    assert 'id="no-history"' in page
    assert coordinates(page, "keys", "keys") == 0
    assert 'id="keys-empty">No figures in this window yet.' in page
    assert re.search(r'id="card-hit-ratio"><h3>Hit ratio</h3><p class="value">n/a<', page)


# -- operations ---------------------------------------------------------------------------------


def test_clear_one_file_asks_first_then_removes_its_key(
    client: FlaskClient, urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str
) -> None:
    ids = add_files(db, "a.png", "b.png", "c.png")
    cache_files(urls, db, ids)
    csrf = signed_in(client)

    asked = client.post(f"{PAGE}/clear", data={"csrf": csrf, "file_id": str(ids[1])})
    assert asked.status_code == 200
    assert message(asked.text) == f"Clear the cached URLs of file {ids[1]}?"
    assert len(url_keys(redis_client, key_prefix)) == 3, "nothing happens before confirming"

    done = client.post(
        f"{PAGE}/clear", data={"csrf": csrf, "file_id": str(ids[1]), "confirm": "yes"}
    )
    assert done.status_code == 200
    assert message(done.text) == f"Cleared 1 cached URL for file {ids[1]}."
    assert url_keys(redis_client, key_prefix) == {f"{key_prefix}{ids[0]}", f"{key_prefix}{ids[2]}"}
    cards = dict(
        re.findall(r'id="card-([a-z-]+)"><h3>[^<]*</h3><p class="value">([^<]*)<', done.text)
    )
    assert cards["keys"] == "2", "the page after an operation shows its effect"

    everything = client.post(f"{PAGE}/clear", data={"csrf": csrf, "file_id": ""})
    assert message(everything.text) == f"Clear every cached URL under the prefix '{key_prefix}'?"
    done = client.post(f"{PAGE}/clear", data={"csrf": csrf, "file_id": "", "confirm": "yes"})
    assert message(done.text) == "Cleared 2 cached URLs."
    assert url_keys(redis_client, key_prefix) == set()


def test_warm_and_refresh_ask_first_then_report(
    client: FlaskClient, urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str
) -> None:
    add_files(db, "a.png", "b.png", file_type="avatar")
    add_files(db, "c.png")
    csrf = signed_in(client)

    asked = client.post(f"{PAGE}/warm", data={"csrf": csrf, "file_type": "avatar", "limit": "50"})
    assert message(asked.text) == "Sign and cache the URLs of the newest 50 rows of type 'avatar'?"
    assert url_keys(redis_client, key_prefix) == set()
    done = client.post(
        f"{PAGE}/warm",
        data={"csrf": csrf, "file_type": "avatar", "limit": "50", "confirm": "yes"},
    )
    assert message(done.text) == "Warmed 2 cached URLs of type avatar."
    assert len(url_keys(redis_client, key_prefix)) == 2

    key = sorted(url_keys(redis_client, key_prefix))[0]
    put_entry(urls, key, "a.png", cache_left=60)
    asked = client.post(f"{PAGE}/refresh", data={"csrf": csrf, "within": "120"})
    assert message(asked.text) == (
        "Renew the cached URLs whose cache lifetime ends within 120 seconds?"
    )
    done = client.post(f"{PAGE}/refresh", data={"csrf": csrf, "within": "120", "confirm": "yes"})
    assert message(done.text) == "Refreshed 1 cached URL expiring within 120 seconds."
    assert redis_client.ttl(key) > 120


@pytest.mark.parametrize(
    ("action", "form", "reason"),
    [
        ("clear", {"file_id": "abc"}, "file_id must be a whole number, got 'abc'"),
        ("clear", {"file_id": "-1"}, "file_id must be a whole number, got '-1'"),
        ("clear", {"file_id": "1", "extra": "x"}, "unknown field 'extra'"),
        ("warm", {"limit": "0"}, "limit must be a whole number from 1 to 100000, got 0"),
        ("warm", {"file_type": "a\x01b"}, "file_type must be a non-empty string"),
        ("refresh", {"within": "9999999"}, "within must be a whole number from 1 to 604800"),
    ],
)
def test_a_bad_field_is_400_and_changes_nothing(
    client: FlaskClient,
    urls: SignedURLs,
    db: Any,
    redis_client: Any,
    key_prefix: str,
    action: str,
    form: dict[str, str],
    reason: str,
) -> None:
    cache_files(urls, db, add_files(db, "a.png"))
    csrf = signed_in(client)
    response = client.post(f"{PAGE}/{action}", data={"csrf": csrf, "confirm": "yes", **form})
    assert response.status_code == 400
    assert message(response.text).startswith(reason)
    assert message(response.text).endswith(": nothing was changed.")
    assert len(url_keys(redis_client, key_prefix)) == 1


def test_a_form_over_16_kib_is_413(client: FlaskClient) -> None:
    csrf = signed_in(client)
    response = client.post(f"{PAGE}/clear", data={"csrf": csrf, "file_id": "1" * 17_000})
    assert response.status_code == 413


def test_warm_without_a_database_says_what_is_missing(urls: SignedURLs) -> None:
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(CacheService(urls), token=TOKEN))
    client = app.test_client()
    csrf = signed_in(client)
    response = client.post(f"{PAGE}/warm", data={"csrf": csrf, "confirm": "yes"})
    assert response.status_code == 501
    assert "needs session_factory" in message(response.text)


def test_redis_down_is_503_with_the_reason_and_the_breaker(make_urls: Any) -> None:
    urls = make_urls(redis="redis://127.0.0.1:1/0")
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(CacheService(urls), token=TOKEN))
    client = app.test_client()
    csrf = signed_in(client)  # signing in needs no Redis

    response = client.get(PAGE)
    assert response.status_code == 503
    assert "Redis unavailable while reading statistics" in response.text
    assert 'id="card-breaker"' in response.text
    cleared = client.post(f"{PAGE}/clear", data={"csrf": csrf, "confirm": "yes"})
    assert cleared.status_code == 503
    assert message(cleared.text).startswith("Redis unavailable while clearing the cache")


# -- what it costs ------------------------------------------------------------------------------


@pytest.fixture
def counted(redis_client: Any, key_prefix: str) -> Iterator[tuple[CountingRedis, FlaskClient]]:
    """A dashboard whose requests' Redis commands are counted (this thread only)."""
    counting = CountingRedis(redis_client._client, this_thread_only=True)
    urls = SignedURLs(urls_signer(), redis=counting, key_prefix=key_prefix, local_cache_size=0)
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(CacheService(urls), token=TOKEN))
    yield counting, app.test_client()
    urls.close()


def urls_signer() -> Any:
    from sqla_signed_urls.testing import FakeSigner

    return FakeSigner()


def test_a_page_costs_the_same_few_commands_whatever_the_cache_size(
    counted: tuple[CountingRedis, FlaskClient], redis_client: Any, key_prefix: str
) -> None:
    counting, client = counted
    signed_in(client)
    now = int(time.time())
    costs = []
    for size in (20, 2000):
        pipe = redis_client._client.pipeline(transaction=False)
        for i in range(size):
            pipe.set(f"{key_prefix}{i}", b"x", ex=3000)
        pipe.zadd(f"{key_prefix}#expiry", {f"{key_prefix}{i}": now + i % 2700 for i in range(size)})
        pipe.execute()
        counting.reset()
        assert client.get(PAGE).status_code == 200
        costs.append(dict(counting.commands))
    assert costs[0] == costs[1]
    assert sum(costs[0].values()) <= 6, costs[0]
    assert not {"SCAN", "SCAN_ITER", "KEYS"} & set(costs[0])


# -- the history endpoint -----------------------------------------------------------------------


def test_the_history_endpoint_serves_the_points_behind_the_bearer_token(
    client: FlaskClient, urls: SignedURLs
) -> None:
    times = fill_history(urls, 5)

    assert client.get("/api/admin/cache/history").status_code == 401
    everything = client.get("/api/admin/cache/history", headers=AUTH)
    assert everything.status_code == 200
    body = everything.get_json()
    assert body["interval"] == 60
    assert [p["time"] for p in body["points"]] == times
    assert body["points"][-1]["hits"] == 95 * 4
    recent = client.get(f"/api/admin/cache/history?since={times[3]}", headers=AUTH)
    assert [p["time"] for p in recent.get_json()["points"]] == times[3:]
    for query, field in [("since=yesterday", "since"), ("since=-5", "since"), ("from=1", "from")]:
        bad = client.get(f"/api/admin/cache/history?{query}", headers=AUTH)
        assert bad.status_code == 400
        assert bad.get_json()["field"] == field
    assert client.post("/api/admin/cache/history", headers=AUTH).status_code == 405


def test_the_token_never_reaches_a_page_a_header_or_a_log_line(
    client: FlaskClient, urls: SignedURLs, caplog_all: pytest.LogCaptureFixture
) -> None:
    fill_history(urls, 3)
    seen: list[str] = []
    for given in ("wrong-token-value", TOKEN):
        response = client.post(f"{PAGE}/sign-in", data={"token": given})
        seen += [response.text, str(response.headers)]
    csrf = csrf_of(client.get(PAGE).text)
    for path, form in [("", None), ("/clear", {"csrf": csrf}), ("/sign-out", {"csrf": csrf})]:
        response = client.post(PAGE + path, data=form) if form else client.get(PAGE)
        seen += [response.text, str(response.headers)]
    assert not [text for text in seen if TOKEN in text]
    assert "cache dashboard: sign-in refused (wrong admin token)" in caplog_all.messages
    assert "cache dashboard: signed in" in caplog_all.messages
    assert not [m for m in caplog_all.messages if TOKEN in m or "wrong-token-value" in m]


# -- FastAPI ------------------------------------------------------------------------------------


def test_the_fastapi_router_serves_the_same_dashboard(tmp_path: Path) -> None:
    import asyncio

    async def main() -> None:
        async with world(tmp_path) as w:
            await fastapi_dashboard(w)

    asyncio.run(main())


async def fastapi_dashboard(w: World) -> None:
    from sqla_signed_urls.fastapi import admin_router

    app = FastAPI()
    service = w.service()
    app.include_router(admin_router(service, token=TOKEN))
    flask_app = Flask(__name__)
    flask_app.register_blueprint(admin_blueprint(service, token=TOKEN))
    ids = w.add(("a.png", "avatar", 0), ("b.png", "avatar", 1))
    await service.awarm_file_url_cache()
    times = fill_history(w.urls, 12)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
        first = await client.get(PAGE)
        assert first.status_code == 401
        assert 'id="sign-in"' in first.text
        wrong = await client.post(f"{PAGE}/sign-in", data={"token": "wrong"})
        assert wrong.status_code == 401
        assert message(wrong.text) == "Wrong admin token: not signed in."
        right = await client.post(f"{PAGE}/sign-in", data={"token": TOKEN})
        assert right.status_code == 303
        assert right.headers["Location"] == PAGE
        assert "HttpOnly" in right.headers["Set-Cookie"]
        assert "SameSite=Strict" in right.headers["Set-Cookie"]
        assert right.headers["Content-Security-Policy"].startswith("default-src 'none'")

        page = (await client.get(PAGE)).text
        assert coordinates(page, "keys", "keys") == len(times)
        assert coordinates(page, "traffic", "hits") == len(times) - 1
        flask_client = flask_app.test_client()
        signed_in(flask_client)
        flask_page = flask_client.get(PAGE).text
        shape = re.compile(r'(data-chart|data-series|id)="[^"]*"')
        assert shape.findall(page) == shape.findall(flask_page), "the same page as Flask's"

        csrf = csrf_of(page)
        refused = await client.post(
            f"{PAGE}/clear", data={"file_id": str(ids[0]), "confirm": "yes"}
        )
        assert refused.status_code == 403
        asked = await client.post(f"{PAGE}/clear", data={"csrf": csrf, "file_id": str(ids[0])})
        assert message(asked.text) == f"Clear the cached URLs of file {ids[0]}?"
        assert f"{w.prefix}{ids[0]}" in w.cached()
        done = await client.post(
            f"{PAGE}/clear", data={"csrf": csrf, "file_id": str(ids[0]), "confirm": "yes"}
        )
        assert message(done.text) == f"Cleared 1 cached URL for file {ids[0]}."
        assert set(w.cached()) == {f"{w.prefix}{ids[1]}"}
        warmed = await client.post(f"{PAGE}/warm", data={"csrf": csrf, "confirm": "yes"})
        assert message(warmed.text) == "Warmed 2 cached URLs."

        history = await client.get("/api/admin/cache/history", headers=AUTH)
        assert [p["time"] for p in history.json()["points"]] == times
        assert (await client.get("/api/admin/cache/history")).status_code == 401
        bad = await client.get("/api/admin/cache/history?since=soon", headers=AUTH)
        assert (bad.status_code, bad.json()["field"]) == (400, "since")
        assert (await client.get("/api/admin/cache/stats")).status_code == 401

        out = await client.post(f"{PAGE}/sign-out", data={"csrf": csrf})
        assert out.status_code == 200
        assert "Max-Age=0" in out.headers["Set-Cookie"]
        assert (await client.get(PAGE)).status_code == 401
        again = await client.post(f"{PAGE}/clear", data={"csrf": csrf, "confirm": "yes"})
        assert again.status_code == 401
        assert set(w.cached()) == {f"{w.prefix}{ids[0]}", f"{w.prefix}{ids[1]}"}
