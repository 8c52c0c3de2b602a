"""The cache dashboard in a real browser: headless Chromium (Selenium) against the admin
blueprint served on 127.0.0.1.

Signs in with a wrong token and then the right one, checks the charts draw as many points as
the history holds, clears one file through the confirmation step and finds its key gone from
Redis, signs out and is refused; a screenshot of the dashboard is kept as an artifact (in
``$SQLA_SIGNED_URLS_ARTIFACTS`` when set, else the test's temporary directory).

The same code, run as a script, takes the screenshot of the README::

    .venv/bin/python -m tests.ops.test_dashboard_browser docs/dashboard.png

Needs Debian's ``chromium`` and ``chromium-driver``; skips without them on a laptop, and fails
instead when ``SQLA_SIGNED_URLS_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from sqla_signed_urls import CacheService, SignedURLs
from sqla_signed_urls.cache.base import encode_entry, signer_tag
from sqla_signed_urls.flask import admin_blueprint
from sqla_signed_urls.history import encode_point
from sqla_signed_urls.testing import FakeSigner

REQUIRE_SERVERS = os.environ.get("SQLA_SIGNED_URLS_REQUIRE_SERVERS") == "1"
TOKEN = "browser-admin-token-5f1c2e9a"
PAGE = "/api/admin/cache/dashboard"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    # Nothing but the app on 127.0.0.1: no name resolves, no proxy is consulted, so a page
    # that needed the network would show it.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--no-proxy-server",
)


def browser_paths() -> tuple[str, str] | None:
    """Chromium and chromedriver, or ``None``."""
    chromium = next(filter(None, (shutil.which(c) for c in ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    return (chromium, driver) if chromium and driver else None


def need_browser() -> tuple[str, str]:
    found = browser_paths()
    if found is None:
        reason = "needs a browser: chromium, chromedriver and selenium"
        if REQUIRE_SERVERS:
            pytest.fail(
                f"{reason}; SQLA_SIGNED_URLS_REQUIRE_SERVERS=1 turns this skip into a failure"
            )
        pytest.skip(reason)
    return found


@contextmanager
def chromium(profile: Path, paths: tuple[str, str], width: int = 1280) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = paths[0]
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},1000")
    options.add_argument(f"--user-data-dir={profile}")
    # An explicit driver path: Selenium Manager is never asked to download anything.
    driver = webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class QuietRequestHandler(WSGIRequestHandler):
    """No request lines in the log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class Site:
    base: str
    urls: SignedURLs
    service: CacheService


@contextmanager
def dashboard_site(redis: Any, key_prefix: str) -> Iterator[Site]:
    """An app serving the admin blueprint (and so the dashboard) on 127.0.0.1, in a thread."""
    urls = SignedURLs(FakeSigner(), redis=redis, key_prefix=key_prefix, local_cache_size=0)
    service = CacheService(urls)
    app = Flask("dashboard-site")
    app.register_blueprint(admin_blueprint(service, token=TOKEN))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-site", daemon=True)
    thread.start()
    try:
        yield Site(f"http://127.0.0.1:{server.server_port}", urls, service)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        urls.close()


def an_hour_of_traffic(urls: SignedURLs, minutes: int, shuffle: int = 7) -> list[int]:
    """``minutes`` points, one a minute up to now, of a fleet serving about 1,000 URLs a minute
    whose cache is emptied by a deploy two thirds of the way: misses and signings jump, the
    hit ratio dips under its target and climbs back as the cache fills again. The fleet
    counters end at the last point's totals."""
    rng = random.Random(shuffle)
    now = int(time.time()) // 60 * 60
    deploy = minutes * 2 // 3
    memory = urls.store.memory_used() or 30_000_000
    totals = dict.fromkeys(("hits", "misses", "signed", "invalidations"), 0)
    keys = 2400
    times = []
    for i in range(minutes):
        at = now - 60 * (minutes - 1 - i)
        reads = rng.randint(900, 1150)
        since_deploy = i - deploy
        if since_deploy == 0:
            keys = 150
        miss_share = 0.06 if since_deploy < 0 else 0.06 + 0.55 * 0.6**since_deploy
        misses = int(reads * miss_share * rng.uniform(0.85, 1.15))
        keys = min(keys + misses - rng.randint(20, 40), 2600) if i else keys
        if i:
            totals["hits"] += reads - misses
            totals["misses"] += misses
            totals["signed"] += misses + rng.randint(0, 6)
            totals["invalidations"] += rng.randint(2, 14)
        point = {**totals, "keys": keys, "memory_used_bytes": memory + keys * 600}
        urls.store.append_history(at, encode_point(at, point), urls.settings.history_points)
        times.append(at)
    have = urls.store.read_counters()
    urls.store.add_counters({k: v - have.get(k, 0) for k, v in totals.items()})
    return times


def cache_files(urls: SignedURLs, count: int, shuffle: int = 3) -> list[str]:
    """Cached URLs for files 1..count, their cache lifetimes spread over ``cache_ttl``."""
    rng = random.Random(shuffle)
    now = int(time.time())
    tag = signer_tag(urls.signer.name)
    writes = []
    for file_id in range(1, count + 1):
        left = rng.randint(30, urls.settings.cache_ttl)
        expires = now + left + urls.settings.min_validity
        url = f"https://files.test/f/{file_id}.png?expires={expires}&sig=fake"
        value = encode_entry((url, expires, now + left), tag, f"f/{file_id}.png")
        writes.append((f"{urls.settings.key_prefix}{file_id}", value, left, now + left))
    for start in range(0, len(writes), 1000):
        urls.store.set_many(writes[start : start + 1000])
    return [key for key, _, _, _ in writes]


def sign_in(driver: Any, base: str, token: str) -> str:
    """Submit the sign-in form; return the message the next page shows (``""`` for none)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if driver.current_url != base + PAGE:
        driver.get(base + PAGE)
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
    WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.ID, "message") or d.find_elements(By.ID, "sign-out")
    )
    found = driver.find_elements(By.ID, "message")
    return str(found[0].text) if found else ""


def drawn_points(driver: Any, chart: str, series: str) -> int:
    """How many points the browser drew for a series of a chart (all its segments)."""
    count: int = driver.execute_script(
        """const lines = document.querySelectorAll(
               `svg[data-chart="${arguments[0]}"] polyline[data-series="${arguments[1]}"]`);
           let n = 0;
           for (const line of lines) { n += line.points.numberOfItems; }
           return n;""",
        chart,
        series,
    )
    return count


def full_page_screenshot(driver: Any, path: Path) -> Path:
    """The whole page as a PNG at ``path``."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return window.outerWidth")
    driver.set_window_size(width, height + 100)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), f"no screenshot at {path}"
    return path


# -- the test -------------------------------------------------------------------------------------


@pytest.fixture
def site(redis_client: Any, key_prefix: str) -> Iterator[Site]:
    with dashboard_site(redis_client._client, key_prefix) as running:
        yield running


def test_sign_in_see_the_charts_clear_a_file_sign_out(
    site: Site,
    redis_client: Any,
    key_prefix: str,
    tmp_path: Path,
    record_property: Any,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths = need_browser()
    times = an_hour_of_traffic(site.urls, 40)
    keys = cache_files(site.urls, 60)
    base = site.base

    with chromium(tmp_path / "profile", paths) as driver:
        # 1. A wrong token, then the right one.
        assert sign_in(driver, base, "not-the-token") == "Wrong admin token: not signed in."
        assert driver.get_cookies() == []
        assert sign_in(driver, base, TOKEN) == ""
        assert driver.current_url == base + PAGE
        (cookie,) = driver.get_cookies()
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert cookie["path"] == PAGE

        # 2. The charts hold every point of the history (rates: one per interval).
        assert drawn_points(driver, "keys", "keys") == len(times)
        assert drawn_points(driver, "memory", "memory_used_bytes") == len(times)
        assert drawn_points(driver, "hit-ratio", "hit_ratio") == len(times) - 1
        for series in ("hits", "misses", "signed"):
            assert drawn_points(driver, "traffic", series) == len(times) - 1
        bars = driver.find_elements(By.CSS_SELECTOR, 'svg[data-chart="expiry"] rect.bar')
        assert sum(int(bar.get_attribute("data-keys")) for bar in bars) == len(keys)
        for svg in driver.find_elements(By.CSS_SELECTOR, "svg[data-chart]"):
            assert svg.size["width"] > 300 and svg.size["height"] > 100
        card = driver.find_element(By.ID, "card-keys").find_element(By.CLASS_NAME, "value")
        assert card.text == f"{len(keys):,}"
        artifacts = Path(os.environ.get("SQLA_SIGNED_URLS_ARTIFACTS") or tmp_path)
        shot = full_page_screenshot(driver, artifacts / "dashboard.png")
        record_property("screenshot", str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        driver.set_window_size(1280, 1000)

        # 3. Clear one file: a confirmation step, then the result; its key is gone from Redis.
        target = f"{key_prefix}7"
        assert redis_client.exists(target) == 1
        driver.find_element(By.ID, "clear-file-id").send_keys("7")
        driver.find_element(By.CSS_SELECTOR, "#clear-form button[type=submit]").click()
        question = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "question"))
        assert question.text == "Clear the cached URLs of file 7?"
        assert redis_client.exists(target) == 1, "nothing happens before confirming"
        driver.find_element(By.ID, "confirm").click()
        result = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "result"))
        assert result.text == "Cleared 1 cached URL for file 7."
        assert redis_client.exists(target) == 0
        assert redis_client.exists(f"{key_prefix}8") == 1
        csrf = driver.find_element(By.CSS_SELECTOR, "#clear-form input[name=csrf]")
        old_csrf = csrf.get_attribute("value")

        # 4. Sign out; the dashboard and its operations refuse the browser.
        driver.find_element(By.CSS_SELECTOR, "#sign-out button").click()
        signed_out = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "message"))
        assert signed_out.text == "Signed out."
        assert driver.get_cookies() == []
        driver.get(base + PAGE)
        assert driver.find_elements(By.ID, "sign-in") and not driver.find_elements(
            By.ID, "sign-out"
        )
        driver.execute_script(  # the clear form of the page before, sent again
            """const form = document.createElement('form');
               form.method = 'post'; form.action = arguments[0];
               for (const [name, value] of Object.entries(arguments[1])) {
                 const input = document.createElement('input');
                 input.type = 'hidden'; input.name = name; input.value = value;
                 form.appendChild(input);
               }
               document.body.appendChild(form); form.submit();""",
            base + PAGE + "/clear",
            {"csrf": old_csrf, "file_id": "8", "confirm": "yes"},
        )
        refused = WebDriverWait(driver, 30).until(
            lambda d: d.current_url.endswith("/clear") and d.find_element(By.ID, "message")
        )
        assert refused.text == "Not signed in (sign in first): nothing was changed."
        assert redis_client.exists(f"{key_prefix}8") == 1


# -- the README's screenshot --------------------------------------------------------------------


def write_screenshot(path: Path, redis_url: str | None, prefix: str) -> Path:
    """The dashboard of an hour of traffic with a deploy in it, as a PNG at ``path``."""
    import fakeredis
    import redis as redis_py

    paths = browser_paths()
    if paths is None:
        raise SystemExit("needs chromium, chromedriver and selenium")
    client: Any = redis_py.Redis.from_url(redis_url) if redis_url else fakeredis.FakeRedis()
    if next(iter(client.scan_iter(match=prefix + "*", count=1000)), None) is not None:
        raise SystemExit(f"keys under {prefix!r} already: choose another --key-prefix")
    try:
        with dashboard_site(client, prefix) as running:
            an_hour_of_traffic(running.urls, 60)
            cache_files(running.urls, running.service.get_cache_history()[-1]["keys"])
            profile = Path(f"/tmp/dashboard-screenshot-{uuid.uuid4().hex[:8]}")
            with chromium(profile, paths, width=1280) as driver:
                sign_in(driver, running.base, TOKEN)
                full_page_screenshot(driver, path)
            shutil.rmtree(profile, ignore_errors=True)
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.unlink(*keys)
        client.close()
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, nargs="?", default=Path("docs/dashboard.png"))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="a real Redis, so memory is reported (default: REDIS_URL, else in-process)",
    )
    parser.add_argument(
        "--key-prefix", default="file_url:", help="an unused prefix (removed afterwards)"
    )
    options = parser.parse_args()
    print(write_screenshot(options.path, options.redis_url, options.key_prefix), file=sys.stdout)
