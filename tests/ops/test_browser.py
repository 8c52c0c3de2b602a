"""A real browser: headless Chromium (Selenium) against the Campus Forum example on 127.0.0.1,
both the Flask app and the async (FastAPI) one.

Shows what the other tests infer from counts: images load through the signed URLs, a second
page view fetches none of them again (the URLs are identical, so the browser cache answers),
and a replaced avatar shows up at once under a new URL.

Needs Debian's ``chromium`` and ``chromium-driver``; skips without them on a laptop, and fails
instead when ``SQLA_SIGNED_URLS_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from werkzeug.serving import WSGIRequestHandler, make_server

from examples.campus_forum import Forum, create_app
from examples.campus_forum.images import png

REQUIRE_SERVERS = os.environ.get("SQLA_SIGNED_URLS_REQUIRE_SERVERS") == "1"
DATABASE_URL = os.environ.get("DATABASE_URL") or None
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--no-pings",
    "--window-size=1280,1000",
    # Nothing but the app on 127.0.0.1: no name resolves, no proxy is consulted.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--no-proxy-server",
)


def _find(*candidates: str) -> str | None:
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def need_browser() -> tuple[str, str]:
    """Paths of Chromium and chromedriver, or skip (laptop) / fail (CI)."""
    chromium = _find(os.environ.get("CHROMIUM_BINARY", ""), "chromium", "chromium-browser")
    driver = _find(os.environ.get("CHROMEDRIVER", ""), "chromedriver")
    problems = []
    if chromium is None:
        problems.append("chromium")
    if driver is None:
        problems.append("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("the selenium package")
    if problems:
        reason = (
            f"needs a browser: {', '.join(problems)} not found "
            "(apt-get install chromium chromium-driver; pip install selenium)"
        )
        if REQUIRE_SERVERS:
            pytest.fail(
                f"{reason}; SQLA_SIGNED_URLS_REQUIRE_SERVERS=1 turns this skip into a failure"
            )
        pytest.skip(reason)
    assert chromium is not None and driver is not None
    return chromium, driver


class FileHits:
    """WSGI middleware counting what the browser asks the server for under ``/files/``."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.requests: list[tuple[str, int]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/files/"):
            return self.app(environ, start_response)
        url = environ.get("REQUEST_URI") or path

        def recording_start_response(status: str, headers: Any, *args: Any) -> Any:
            with self.lock:
                self.requests.append((url, int(status.split()[0])))
            return start_response(status, headers, *args)

        return self.app(environ, recording_start_response)

    def count(self) -> Counter[str]:
        with self.lock:
            return Counter(url for url, _ in self.requests)

    def statuses(self) -> set[int]:
        with self.lock:
            return {status for _, status in self.requests}


class QuietRequestHandler(WSGIRequestHandler):
    """Logs no request lines: they hold signed URLs, which are bearer credentials."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ASGIFileHits(FileHits):
    """:class:`FileHits` for an ASGI app."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # type: ignore[override]
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/files/"):
            await self.app(scope, receive, send)
            return
        url = scope.get("raw_path", b"").decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                with self.lock:
                    self.requests.append((url, message["status"]))
            await send(message)

        await self.app(scope, receive, recording_send)


@dataclass
class LiveServer:
    base: str
    hits: FileHits


@pytest.fixture
def forum_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """PostgreSQL from the conftest ``engine``, else a SQLite file (the server has threads)."""
    if DATABASE_URL:
        yield request.getfixturevalue("engine")
        return
    engine = create_engine(f"sqlite:///{tmp_path / 'forum.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["flask", "fastapi"])
def live_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """The Flask forum (werkzeug) or the async forum (uvicorn) on 127.0.0.1, in a thread."""
    serve = _flask_server if request.param == "flask" else _asgi_server
    yield from serve(request, tmp_path)


def _flask_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    app = create_app(
        {
            "ENGINE": request.getfixturevalue("forum_engine"),
            "REDIS_CLIENT": request.getfixturevalue("redis_client"),
            "FILE_URL_CACHE_KEY_PREFIX": request.getfixturevalue("key_prefix"),
            "FILES_SECRET": "browser-test-secret-0123456789abcdef",
            "UPLOAD_DIR": str(tmp_path / "uploads"),
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "ADMIN_TOKEN": None,
            "OSS_ACCESS_KEY_ID": None,
            "OSS_BUCKET": None,
        }
    )
    hits = FileHits(app.wsgi_app)
    app.wsgi_app = hits  # type: ignore[method-assign]
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}", hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        Forum.of(app).close()


def _asgi_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    import uvicorn

    from examples.campus_forum.asgi import create_app as create_asgi_app

    from ..helpers.clients import REDIS_URL
    from ..helpers.forum import forum_config, forum_database

    prefix = request.getfixturevalue("key_prefix")
    with forum_database(tmp_path) as database:
        redis = {"REDIS_URL": REDIS_URL, "FILE_URL_CACHE_KEY_PREFIX": prefix} if REDIS_URL else {}
        app = create_asgi_app(forum_config(tmp_path, database, **redis))
        hits = ASGIFileHits(app)
        # No access log: its lines hold signed URLs (redacted, but the test needs none).
        config = uvicorn.Config(
            hits, host="127.0.0.1", port=0, access_log=False, log_level="warning"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="live-server", daemon=True)
        thread.start()
        for _ in range(600):  # the app migrates and loads demo data before it listens
            if server.started or not thread.is_alive():
                break
            thread.join(0.1)
        try:
            assert server.started, "uvicorn did not start"
            port = server.servers[0].sockets[0].getsockname()[1]
            yield LiveServer(f"http://127.0.0.1:{port}", hits)
        finally:
            server.should_exit = True
            thread.join()
            if REDIS_URL:
                import redis as redis_py

                client = redis_py.Redis.from_url(REDIS_URL)
                keys = list(client.scan_iter(match=prefix + "*"))
                if keys:
                    client.unlink(*keys)
                client.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium, driver_path = need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    # An explicit driver path: Selenium Manager is never asked to download anything.
    service = Service(executable_path=driver_path)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def images(driver: Any) -> list[dict[str, Any]]:
    """Every ``<img>`` on the page once the page has finished loading them."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)")
    )
    found: list[dict[str, Any]] = driver.execute_script(
        """return Array.from(document.images).map(i => ({
            src: i.getAttribute('src'), width: i.naturalWidth, height: i.naturalHeight,
            user: i.dataset.userId || null}))"""
    )
    return found


def click(driver: Any, css: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, css).click()


def test_images_load_once_and_a_new_avatar_shows_at_once(
    browser: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    hits = live_server.hits

    # 1. The post list: every image loads through its signed URL, each fetched once; avatars
    #    come through their thumbnail variant, scaled by the server to 64 pixels wide.
    browser.get(live_server.base + "/")
    first = images(browser)
    assert len(first) >= 10
    assert all(i["width"] > 0 for i in first), first
    sources = {i["src"] for i in first}
    fetched = hits.count()
    assert set(fetched) == sources
    assert all(n == 1 for n in fetched.values()), fetched
    assert hits.statuses() == {200}
    avatars = [i for i in first if i["user"]]
    assert avatars and all("x-oss-process=image%2Fresize%2Cw_64" in i["src"] for i in avatars)
    assert all(i["width"] == 64 for i in avatars), avatars

    # An attachment downloads under its original name: the header the browser receives.
    link = browser.execute_script(
        "const a = document.querySelector('.attachments a');"
        "return a && {href: a.getAttribute('href'), name: a.textContent.trim()}"
    )
    assert link, "no attachment on the first page"
    disposition = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => done(r.headers.get('content-disposition')));",
        link["href"],
    )
    assert disposition == f'attachment; filename="{link["name"]}"'
    fetched = hits.count()  # the images, and that one attachment

    # 2. Another page and back: identical URLs, so the browser cache serves every image.
    post_with_images = browser.execute_script(
        "return [...document.querySelectorAll('article.post')]"
        ".find(p => p.querySelector('.images img')).querySelector('h2 a').getAttribute('href')"
    )
    click(browser, f'h2 a[href="{post_with_images}"]')
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith(post_with_images))
    on_post = images(browser)
    assert on_post and all(i["width"] > 0 for i in on_post)
    click(browser, "#home")
    WebDriverWait(browser, 30).until(lambda d: d.current_url == live_server.base + "/")
    again = images(browser)
    assert [i["src"] for i in again] == [i["src"] for i in first]
    assert all(i["width"] > 0 for i in again)
    assert hits.count() == fetched, "the second view fetched images from the server again"

    # 3. Replace an avatar: the profile and the list show the new file under a new URL.
    user_id = next(i["user"] for i in first if i["user"])
    old_avatar = next(i["src"] for i in first if i["user"] == user_id)
    browser.get(f"{live_server.base}/users/{user_id}")
    upload = tmp_path / "new-avatar.png"
    upload.write_bytes(png(37, 23, [b"\xe0\x40\x90" * 37] * 23))
    browser.find_element(By.CSS_SELECTOR, "#avatar-form input[type=file]").send_keys(str(upload))
    click(browser, "#avatar-form button[type=submit]")
    WebDriverWait(browser, 30).until(
        lambda d: (
            d.execute_script("return document.querySelector('img.avatar').getAttribute('src')")
            != old_avatar
        )
    )
    profile = [i for i in images(browser) if i["user"] == user_id]
    new_avatar = profile[0]["src"]
    assert (profile[0]["width"], profile[0]["height"]) == (37, 23)
    assert hits.count()[new_avatar] == 1
    click(browser, "#home")
    WebDriverWait(browser, 30).until(lambda d: d.current_url == live_server.base + "/")
    listed = [i for i in images(browser) if i["user"] == user_id]
    assert listed
    thumbnail = listed[0]["src"]  # the new file's thumbnail: never scaled up
    assert thumbnail.split("?")[0] == new_avatar.split("?")[0] and thumbnail != new_avatar
    assert all(i["src"] == thumbnail and (i["width"], i["height"]) == (37, 23) for i in listed)
    assert old_avatar not in {i["src"] for i in listed}
    assert hits.count()[thumbnail] == 1  # fetched once, then from the browser cache
    assert hits.statuses() == {200}
