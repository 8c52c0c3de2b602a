"""The async Campus Forum (FastAPI + ``AsyncSession``) through ``httpx.AsyncClient``: pages,
signed file serving, one async ``MGET`` per page and no blocking Redis call on the loop,
avatar replacement that invalidates before the answer, the admin router, and the documented
``uvicorn`` command.

Runs on aiosqlite and fakeredis, or asyncpg/PostgreSQL and Redis when ``DATABASE_URL`` /
``REDIS_URL`` are set.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from examples.campus_forum.asgi import AsyncForum, async_database_url, create_app
from examples.campus_forum.images import png
from sqla_signed_urls import signals
from sqla_signed_urls.signers import LocalSigner
from sqla_signed_urls.testing import CountingAsyncRedis, CountingRedis

from ..helpers.clients import REDIS_URL, client_pair, close_pair
from ..helpers.forum import SECRET, forum_config, forum_database
from .test_example_app import Page

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Forum:
    app: FastAPI
    client: httpx.AsyncClient
    sync: CountingRedis
    aio: CountingAsyncRedis
    prefix: str

    @property
    def forum(self) -> AsyncForum:
        return AsyncForum.of(self.app)

    @property
    def signer(self) -> LocalSigner:
        signer = self.forum.signer
        assert isinstance(signer, LocalSigner)
        return signer

    async def page(self, path: str) -> Page:
        response = await self.client.get(path)
        assert response.status_code == 200, path
        return Page(response.text)

    async def stored(self, file_id: int) -> bytes | None:
        value: bytes | None = await self.aio._client.get(f"{self.prefix}{file_id}")
        return value


@asynccontextmanager
async def running(tmp_path: Path, **config: Any) -> AsyncIterator[Forum]:
    """The app with its lifespan (migration, demo data) and a client, in this loop."""
    prefix = f"t{uuid.uuid4().hex[:8]}:file_url:" if REDIS_URL else "file_url:"
    sync, aio = client_pair(this_thread_only=True)  # the loop's thread: where requests run
    with forum_database(tmp_path) as database:
        app = create_app(
            forum_config(
                tmp_path,
                database,
                REDIS_CLIENT=sync,
                ASYNC_REDIS_CLIENT=aio,
                FILE_URL_CACHE_KEY_PREFIX=prefix,
                **config,
            )
        )
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://forum.test"
                ) as client,
            ):
                # Page counts assume the in-process layer serves: it does once the listener
                # has subscribed (a moment after start on a real Redis).
                urls = AsyncForum.of(app).urls
                urls.channel.ensure_started()
                for _ in range(3000):  # bounded: the listener's own timeouts end it sooner
                    if urls.channel.live:
                        break
                    await asyncio.sleep(0.01)
                yield Forum(app, client, sync, aio, prefix)
        finally:
            await close_pair(sync, aio, prefix)


def run(tmp_path: Path, body: Callable[[Forum], Awaitable[None]], **config: Any) -> None:
    async def main() -> None:
        async with running(tmp_path, **config) as forum:
            await body(forum)

    asyncio.run(main())


def test_pages_show_images_by_signed_urls(tmp_path: Path) -> None:
    async def body(f: Forum) -> None:
        index = await f.page("/")
        assert len(index.images) >= 10
        for image in index.images:
            assert image["src"].startswith("/files/")
            assert f.signer.verify(image["src"])
        avatars = [i for i in index.images if "avatar" in i.get("class", "")]
        assert avatars
        assert all(f.signer.verify(a["src"]).startswith("avatars/") for a in avatars)
        assert (await f.page("/?page=2")).images
        assert (await f.page("/?page=oops")).images  # a bad page number shows the first page
        assert (await f.page("/users/1")).images
        first_post = re.search(r'href="/posts/(\d+)"', (await f.client.get("/")).text)
        assert first_post is not None
        assert (await f.page(f"/posts/{first_post.group(1)}")).images
        assert (await f.client.get("/posts/999999")).status_code == 404
        assert (await f.client.get("/users/999999")).status_code == 404

    run(tmp_path, body)


def test_signed_urls_serve_the_files_and_bad_ones_are_refused(tmp_path: Path) -> None:
    async def body(f: Forum) -> None:
        settings = f.forum.urls.settings
        index = await f.page("/")
        for image in index.images:
            response = await f.client.get(image["src"])
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "image/png"
            assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
            match = re.search(r"max-age=(\d+)", response.headers["Cache-Control"])
            assert match is not None
            assert settings.url_ttl - settings.cache_ttl <= int(match.group(1)) <= settings.url_ttl

        src = index.images[0]["src"]
        path, query = src.split("?", 1)
        signature = re.search(r"signature=([^&]+)", query)
        assert signature is not None
        flipped = signature.group(1)[:-1] + ("A" if signature.group(1)[-1] != "A" else "B")
        other_key = f.signer.verify(index.images[1]["src"])
        refused = [
            src.replace(signature.group(1), flipped),
            f"/files/{other_key}?{query}",
            path,
            f.signer.sign(f.signer.verify(src), expires_at=int(time.time()) - 10),
        ]
        for url in refused:
            assert (await f.client.get(url)).status_code == 403, url
        expires = int(re.search(r"expires=(\d+)", query).group(1))  # type: ignore[union-attr]
        missing = f.signer.sign("posts/none/missing.png", expires_at=expires)
        assert (await f.client.get(missing)).status_code == 404

    run(tmp_path, body)


def test_attachments_with_unusual_names_are_served(tmp_path: Path) -> None:
    async def body(f: Forum) -> None:
        links: list[dict[str, str]] = []
        for page in ("/", "/?page=2", "/?page=3"):
            links += (await f.page(page)).links
        assert links
        for link in links:
            response = await f.client.get(link["href"])
            assert response.status_code == 200, link
            assert response.headers["Content-Type"].endswith("charset=utf-8")

    run(tmp_path, body)


def test_a_list_page_is_one_async_mget_and_never_a_blocking_call(tmp_path: Path) -> None:
    async def body(f: Forum) -> None:
        f.aio.reset()
        f.sync.reset()
        cold = await f.page("/")
        assert len(cold.images) + len(cold.links) >= 10
        assert f.aio.commands == {"MGET": 1, "PIPELINE": 1}  # one lookup, one batch of writes
        assert f.sync.round_trips == 0, "a blocking Redis call ran on the event loop"

        f.forum.urls.clear_local()  # read from Redis, not the in-process layer
        f.aio.reset()
        warm = await f.page("/")
        assert f.aio.commands == {"MGET": 1}
        assert [i["src"] for i in warm.images] == [i["src"] for i in cold.images]

        f.aio.reset()
        for path in ("/", "/users/2"):
            await f.page(path)
        assert f.aio.commands["GET"] == 0
        assert f.sync.round_trips == 0

    run(tmp_path, body)


def test_replacing_an_avatar_invalidates_before_the_answer(tmp_path: Path) -> None:
    async def body(f: Forum) -> None:
        old_profile = await f.page("/users/1")
        old_src = old_profile.images[0]["src"]
        avatar_id = int(old_profile.images[0]["data-file-id"])
        assert await f.stored(avatar_id) is not None
        invalidated: list[str] = []

        def receive(sender: Any, **kwargs: Any) -> None:
            invalidated.extend(kwargs["keys"])

        upload = png(40, 30, [b"\x10\x80\xf0" * 40] * 30)
        f.aio.reset()
        f.sync.reset()
        with signals.url_invalidated.connected_to(receive):
            response = await f.client.post(
                "/users/1/avatar", files={"avatar": ("me.png", upload, "image/png")}
            )

        assert response.status_code == 303
        assert response.headers["Location"] == "/users/1"
        assert sorted(invalidated) == [f"{f.prefix}{avatar_id}", f"{f.prefix}{avatar_id}:thumb"]
        assert await f.stored(avatar_id) is None  # gone when the answer came
        assert f.aio.commands["PUBLISH"] == 1  # other processes were told, through the async client
        assert f.sync.round_trips == 0
        profile = await f.page("/users/1")
        new_src = profile.images[0]["src"]
        assert new_src != old_src
        assert profile.images[0]["data-file-id"] == str(avatar_id)  # same row, new object key
        assert (await f.client.get(new_src)).content == upload
        assert (await f.client.get(old_src)).status_code == 404  # the old object is deleted
        on_index = [i["src"] for i in (await f.page("/")).images if i.get("data-user-id") == "1"]
        assert on_index  # the list shows the new file's thumbnail
        assert all(f.signer.verify(src) == f.signer.verify(new_src) for src in on_index)

    run(tmp_path, body)


def test_removing_a_file_from_a_post_invalidates_before_the_answer(tmp_path: Path) -> None:
    async def body(f: Forum) -> None:
        listed = re.findall(r'href="/posts/(\d+)"', (await f.client.get("/")).text)
        post_id, images = 0, []
        for post_id in map(int, listed):  # the first post with an image
            images = [
                i
                for i in (await f.page(f"/posts/{post_id}")).images
                if "avatar" not in i.get("class", "")
            ]
            if images:
                break
        image = images[0]
        file_id = int(image["data-file-id"])
        assert await f.stored(file_id) is not None

        response = await f.client.post(f"/posts/{post_id}/files/{file_id}/delete")

        assert response.status_code == 303
        assert response.headers["Location"] == f"/posts/{post_id}"
        assert await f.stored(file_id) is None  # gone when the answer came
        after = await f.page(f"/posts/{post_id}")
        assert str(file_id) not in [i.get("data-file-id") for i in after.images]
        assert (await f.client.get(image["src"])).status_code == 404
        again = await f.client.post(f"/posts/{post_id}/files/{file_id}/delete")
        assert again.status_code == 404
        avatar_id = int((await f.page("/users/1")).images[0]["data-file-id"])
        avatar = await f.client.post(f"/posts/{post_id}/files/{avatar_id}/delete")
        assert avatar.status_code == 404

        health = await f.client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "database": "ok", "redis": "ok"}

    run(tmp_path, body)


def test_uploads_that_are_not_images_or_too_large_are_refused(tmp_path: Path) -> None:
    async def body(f: Forum) -> None:
        before = (await f.page("/users/2")).images[0]["src"]

        evil = await f.client.post(
            "/users/2/avatar", files={"avatar": ("evil.png", b"#!/bin/sh\n", "image/png")}
        )
        huge = await f.client.post(
            "/users/2/avatar", files={"avatar": ("big.png", b"\x89PNG" + b"0" * 5000, "image/png")}
        )

        assert evil.status_code == 400
        assert "PNG, JPEG, GIF or WebP" in evil.text
        assert huge.status_code == 413
        assert (await f.page("/users/2")).images[0]["src"] == before
        drawn = await f.client.post("/users/2/avatar")
        assert drawn.status_code == 303
        assert (await f.page("/users/2")).images[0]["src"] != before

    run(tmp_path, body, MAX_CONTENT_LENGTH=4096)


def test_admin_router_is_mounted_with_admin_token(tmp_path: Path) -> None:
    async def body(f: Forum) -> None:
        index = await f.page("/")
        file_id = int(index.images[0]["data-file-id"])
        auth = {"Authorization": "Bearer admin-secret"}

        assert (await f.client.get("/api/admin/cache/stats")).status_code == 401
        stats = await f.client.get("/api/admin/cache/stats", headers=auth)
        assert stats.status_code == 200
        assert stats.json()["keys"] >= 10
        cleared = await f.client.post(
            "/api/admin/cache/clear", json={"file_id": file_id}, headers=auth
        )
        assert cleared.json() == {"cleared": 2}  # the URL and its thumbnail
        assert await f.stored(file_id) is None
        warmed = await f.client.post("/api/admin/cache/warm", json={}, headers=auth)
        assert warmed.status_code == 200 and warmed.json()["warmed"] >= 1
        assert await f.stored(file_id) is not None

    run(tmp_path, body, ADMIN_TOKEN="admin-secret")


def test_without_admin_token_there_is_no_admin_api(tmp_path: Path) -> None:
    async def body(f: Forum) -> None:
        assert (await f.client.get("/api/admin/cache/stats")).status_code == 404

    run(tmp_path, body)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u@db/forum", "postgresql+asyncpg://u@db/forum"),
        ("postgresql+psycopg://u:pw@db:5433/forum", "postgresql+asyncpg://u:pw@db:5433/forum"),
        ("postgresql+asyncpg://u@db/forum", "postgresql+asyncpg://u@db/forum"),
        ("sqlite:///instance/forum.db", "sqlite+aiosqlite:///instance/forum.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_urls_get_an_async_driver(given: str, used: str) -> None:
    assert async_database_url(given) == used


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_documented_uvicorn_command_serves_the_forum(tmp_path: Path) -> None:
    """``uvicorn --factory examples.campus_forum.asgi:create_app``, configured from the
    environment only; its access log shows the file requests with the signatures blanked."""
    # SQLite whatever the suite runs on: this is about the command (the tests above cover
    # PostgreSQL), and a URL alone cannot give a PostgreSQL run a schema of its own.
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "FILES_SECRET": SECRET,
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "ADMIN_TOKEN": "",
        "OSS_BUCKET": "",
        "OSS_ACCESS_KEY_ID": "",
    }
    log_path = tmp_path / "uvicorn.log"
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "examples.campus_forum.asgi:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
        try:
            base = f"http://127.0.0.1:{port}"
            html = _get_when_up(base + "/", server)
            sources = re.findall(r'<img[^>]* src="(/files/[^"]+)"', html)
            assert len(sources) >= 10
            src = sources[0].replace("&amp;", "&")
            with urllib.request.urlopen(base + src, timeout=10) as reply:  # noqa: S310
                assert reply.status == 200
                assert reply.read().startswith(b"\x89PNG")
        finally:
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=30) == 0
    logged = log_path.read_text()
    assert "GET /files/" in logged
    assert "signature=<redacted>" in logged
    signature = re.search(r"signature=([^&]+)", src)
    assert signature is not None and signature.group(1) not in logged


def _get_when_up(url: str, server: subprocess.Popen[bytes]) -> str:
    """The page at ``url`` once the server answers (it migrates and loads demo data first)."""
    for _ in range(600):  # up to about 60 s
        if server.poll() is not None:
            pytest.fail(f"uvicorn exited with {server.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310
                body: str = reply.read().decode()
                return body
        except OSError:
            time.sleep(0.1)
    pytest.fail("uvicorn did not answer within about 60 s")
