"""The campus-forum example through Flask's test client: pages, signed file serving, avatar
replacement with invalidation, and one Redis round trip per page.

Runs on the conftest ``engine`` (SQLite in memory, or PostgreSQL from ``DATABASE_URL``) and
``redis_client`` (fakeredis, or Redis from ``REDIS_URL``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, select

from examples.campus_forum import Forum, create_app
from examples.campus_forum.images import png
from examples.campus_forum.models import File, User
from sqla_signed_urls import signals
from sqla_signed_urls.signers import LocalSigner
from sqla_signed_urls.testing import CountingRedis

from ..conftest import wait_until
from ..helpers.forum import ISOLATE, SECRET


class Page(HTMLParser):
    """The ``<img>`` and file links of a rendered page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.links: list[dict[str, str]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(values)
        elif tag == "a" and values.get("href", "").startswith("/files/"):
            self.links.append(values)


@pytest.fixture
def counting(redis_client: Any) -> CountingRedis:
    """Counts the round trips of the test's own thread, where the test client runs requests
    (not the cache's background thread)."""
    return CountingRedis(redis_client, this_thread_only=True)


@pytest.fixture
def app(
    engine: Engine, tmp_path: Path, counting: CountingRedis, key_prefix: str
) -> Iterator[Flask]:
    app = create_app(
        {
            **ISOLATE,
            "TESTING": True,
            "ENGINE": engine,
            "REDIS_CLIENT": counting,
            "FILE_URL_CACHE_KEY_PREFIX": key_prefix,
            "FILES_SECRET": SECRET,
            "UPLOAD_DIR": str(tmp_path / "uploads"),
            "INSTANCE_PATH": str(tmp_path / "instance"),
        }
    )
    # Page counts assume the in-process layer serves, which it does once the invalidation
    # listener has subscribed (a moment after start on a real Redis).
    urls = Forum.of(app).urls
    urls.channel.ensure_started()
    wait_until(lambda: urls.channel.live, "the invalidation listener")
    yield app
    Forum.of(app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def signer_of(app: Flask) -> LocalSigner:
    signer = Forum.of(app).signer
    assert isinstance(signer, LocalSigner)
    return signer


def get_page(client: FlaskClient, path: str) -> Page:
    response = client.get(path)
    assert response.status_code == 200, path
    return Page(response.text)


def test_pages_show_images_by_signed_urls(app: Flask, client: FlaskClient) -> None:
    signer = signer_of(app)
    index = get_page(client, "/")

    assert len(index.images) >= 10
    for image in index.images:
        assert image["src"].startswith("/files/")
        assert signer.verify(image["src"])  # a valid signature for an object key
    avatars = [i for i in index.images if "avatar" in i.get("class", "")]
    assert avatars
    assert all(signer.verify(a["src"]).startswith("avatars/") for a in avatars)
    assert get_page(client, "/?page=2").images
    assert get_page(client, "/users/1").images
    first_post = re.search(r'href="/posts/(\d+)"', client.get("/").text)
    assert first_post is not None
    assert get_page(client, f"/posts/{first_post.group(1)}").images
    assert client.get("/posts/999999").status_code == 404
    assert client.get("/users/999999").status_code == 404


def test_signed_urls_serve_the_files_with_cache_control(app: Flask, client: FlaskClient) -> None:
    settings = Forum.of(app).urls.settings
    index = get_page(client, "/")

    for image in index.images:
        response = client.get(image["src"])
        assert response.status_code == 200
        assert response.mimetype == "image/png"
        assert response.data.startswith(b"\x89PNG\r\n\x1a\n")
        cache_control = response.headers["Cache-Control"]
        assert "private" in cache_control
        assert "immutable" in cache_control
        match = re.search(r"max-age=(\d+)", cache_control)
        assert match is not None
        assert settings.url_ttl - settings.cache_ttl <= int(match.group(1)) <= settings.url_ttl


def test_attachments_with_unusual_names_are_served(app: Flask, client: FlaskClient) -> None:
    forum = Forum.of(app)
    with forum.Session() as session:
        attachments = session.scalars(select(File).where(File.file_type == "attachment")).all()
        urls = forum.urls.resolve(attachments)
    assert attachments

    for attachment, url in zip(attachments, urls, strict=True):
        assert url is not None
        response = client.get(url)
        assert response.status_code == 200, attachment.object_key
        assert response.headers["Content-Type"].endswith("charset=utf-8")
        assert len(response.data) == attachment.size


def test_tampered_and_expired_urls_are_refused(app: Flask, client: FlaskClient) -> None:
    signer = signer_of(app)
    src = get_page(client, "/").images[0]["src"]
    path, query = src.split("?", 1)
    signature = re.search(r"signature=([^&]+)", query)
    assert signature is not None
    flipped = signature.group(1)[:-1] + ("A" if signature.group(1)[-1] != "A" else "B")
    expires = int(re.search(r"expires=(\d+)", query).group(1))  # type: ignore[union-attr]
    other_key = signer.verify(get_page(client, "/").images[1]["src"])

    refused = [
        src.replace(signature.group(1), flipped),  # signature altered
        src.replace(f"expires={expires}", f"expires={expires + 3600}"),  # validity extended
        f"/files/{other_key}?{query}",  # another file under this signature
        path,  # no signature at all
        signer.sign(signer.verify(src), expires_at=int(time.time()) - 10),  # expired
    ]
    for url in refused:
        assert client.get(url).status_code == 403, url
    missing = signer.sign("posts/none/missing.png", expires_at=expires)
    assert client.get(missing).status_code == 404


def test_replacing_an_avatar_invalidates_its_url_and_shows_the_new_file(
    app: Flask, client: FlaskClient, key_prefix: str
) -> None:
    signer = signer_of(app)
    forum = Forum.of(app)
    with forum.Session() as session:
        avatar = session.scalars(select(File).where(File.owner_id == 1, File.file_type == "avatar"))
        avatar_id = avatar.one().id
    old_src = get_page(client, "/users/1").images[0]["src"]
    invalidated: list[str] = []

    def receive(sender: Any, **kwargs: Any) -> None:
        invalidated.extend(kwargs["keys"])

    upload = png(40, 30, [b"\x10\x80\xf0" * 40] * 30)
    with signals.url_invalidated.connected_to(receive):
        response = client.post(
            "/users/1/avatar",
            data={"avatar": (_bytes_io(upload), "me.png")},
            content_type="multipart/form-data",
        )

    assert response.status_code == 303
    # the avatar's URL and its thumbnail's, in one invalidation
    assert sorted(invalidated) == [f"{key_prefix}{avatar_id}", f"{key_prefix}{avatar_id}:thumb"]
    profile = get_page(client, "/users/1")
    new_src = profile.images[0]["src"]
    assert new_src != old_src
    assert profile.images[0]["data-file-id"] == str(avatar_id)  # same row, new object key
    assert signer.verify(new_src) != signer.verify(old_src)
    assert client.get(new_src).data == upload
    assert client.get(old_src).status_code == 404  # the old object is gone from storage
    on_index = [i["src"] for i in get_page(client, "/").images if i.get("data-user-id") == "1"]
    assert on_index  # the list shows the new file's thumbnail
    assert all(signer.verify(src) == signer.verify(new_src) != src for src in on_index)


def test_an_upload_that_is_not_an_image_is_refused(app: Flask, client: FlaskClient) -> None:
    before = get_page(client, "/users/2").images[0]["src"]

    response = client.post(
        "/users/2/avatar",
        data={"avatar": (_bytes_io(b"#!/bin/sh\n"), "evil.png")},
        content_type="multipart/form-data",
    )

    assert response.status_code == 400
    assert get_page(client, "/users/2").images[0]["src"] == before


def test_replacing_without_an_upload_draws_a_new_avatar(app: Flask, client: FlaskClient) -> None:
    before = get_page(client, "/users/3").images[0]["src"]

    assert client.post("/users/3/avatar").status_code == 303

    after = get_page(client, "/users/3").images[0]["src"]
    assert after != before
    assert client.get(after).data.startswith(b"\x89PNG")


def test_removing_a_file_from_a_post_invalidates_its_url(
    app: Flask, client: FlaskClient, key_prefix: str
) -> None:
    forum = Forum.of(app)
    with forum.Session() as session:
        image = session.scalars(select(File).where(File.file_type == "post_image")).first()
        assert image is not None and image.post_id is not None
        file_id, post_id = image.id, image.post_id
    before = get_page(client, f"/posts/{post_id}")
    src = next(i["src"] for i in before.images if i.get("data-file-id") == str(file_id))
    assert client.get(src).status_code == 200
    invalidated: list[str] = []

    def receive(sender: Any, **kwargs: Any) -> None:
        invalidated.extend(kwargs["keys"])

    with signals.url_invalidated.connected_to(receive):
        response = client.post(f"/posts/{post_id}/files/{file_id}/delete")

    assert response.status_code == 303
    assert response.headers["Location"] == f"/posts/{post_id}"
    assert sorted(invalidated) == [f"{key_prefix}{file_id}", f"{key_prefix}{file_id}:thumb"]
    after = get_page(client, f"/posts/{post_id}")
    assert str(file_id) not in [i.get("data-file-id") for i in after.images]
    assert client.get(src).status_code == 404  # the object is gone from storage
    assert client.post(f"/posts/{post_id}/files/{file_id}/delete").status_code == 404


def test_only_a_posts_own_files_can_be_removed(app: Flask, client: FlaskClient) -> None:
    forum = Forum.of(app)
    with forum.Session() as session:
        avatar = session.scalars(select(File).where(File.file_type == "avatar")).first()
        image = session.scalars(select(File).where(File.file_type == "post_image")).first()
        assert avatar is not None and image is not None and image.post_id is not None

    assert client.post(f"/posts/{image.post_id}/files/{avatar.id}/delete").status_code == 404
    assert client.post(f"/posts/{image.post_id + 1000}/files/{image.id}/delete").status_code == 404
    with forum.Session() as session:
        assert session.get(File, avatar.id) is not None
        assert session.get(File, image.id) is not None


def test_the_health_check(app: Flask, client: FlaskClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_a_page_resolves_all_its_urls_in_one_redis_round_trip(
    app: Flask, client: FlaskClient, counting: CountingRedis
) -> None:
    counting.reset()
    cold = get_page(client, "/")
    assert len(cold.images) + len(cold.links) >= 10
    assert counting.commands["MGET"] == 1  # every URL on the page looked up at once
    assert counting.commands["GET"] == 0
    assert counting.commands["PIPELINE"] == 1  # and the signed ones written at once

    Forum.of(app).urls.clear_local()  # read from Redis, not the in-process layer
    counting.reset()
    warm = get_page(client, "/")
    assert counting.round_trips == 1
    assert counting.commands["MGET"] == 1
    assert [i["src"] for i in warm.images] == [i["src"] for i in cold.images]

    counting.reset()
    get_page(client, "/")
    assert counting.round_trips <= 1  # zero once the in-process layer is live


def test_seeding_happens_once(engine: Engine, tmp_path: Path, redis_client: Any) -> None:
    config = {
        **ISOLATE,
        "ENGINE": engine,
        "REDIS_CLIENT": redis_client,
        "FILES_SECRET": SECRET,
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "INSTANCE_PATH": str(tmp_path / "instance"),
    }
    counts: list[int] = []
    for _ in range(2):
        app = create_app(config)
        forum = Forum.of(app)
        with forum.Session() as session:
            counts.append(session.scalar(select(func.count()).select_from(User)) or 0)
        forum.close()

    assert counts[0] == counts[1] > 0


def test_no_configuration_runs_on_embedded_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [*ISOLATE, "DATABASE_URL", "REDIS_URL", "FILES_SECRET"]:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("FILE_URL_"):
            monkeypatch.delenv(name)
    instance = tmp_path / "instance"

    app = create_app({"INSTANCE_PATH": str(instance)})
    try:
        forum = Forum.of(app)
        assert isinstance(forum.signer, LocalSigner)
        assert type(forum.urls.redis).__module__.startswith("fakeredis")
        assert forum.engine.url.database == str(instance / "campus_forum.db")
        assert (instance / "files_secret").stat().st_mode & 0o077 == 0
        client = app.test_client()
        index = get_page(client, "/")
        assert index.images
        assert client.get(index.images[0]["src"]).status_code == 200
    finally:
        Forum.of(app).close()


def test_admin_api_is_mounted_with_admin_token(
    engine: Engine, tmp_path: Path, redis_client: Any, key_prefix: str
) -> None:
    pytest.importorskip("sqla_signed_urls.flask", reason="the admin API (flask extra) is missing")
    pytest.importorskip("sqla_signed_urls.service", reason="CacheService is missing")
    base = {
        **ISOLATE,
        "ENGINE": engine,
        "REDIS_CLIENT": redis_client,
        "FILE_URL_CACHE_KEY_PREFIX": key_prefix,
        "FILES_SECRET": SECRET,
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "INSTANCE_PATH": str(tmp_path / "instance"),
    }

    app = create_app({**base, "ADMIN_TOKEN": "s3cret-admin-token"})
    try:
        client = app.test_client()
        get_page(client, "/")
        ok = client.get(
            "/api/admin/cache/stats", headers={"Authorization": "Bearer s3cret-admin-token"}
        )
        assert ok.status_code == 200
        assert "hits" in ok.get_json()
        assert client.get("/api/admin/cache/stats").status_code == 401
        signed_out = client.get("/api/admin/cache/dashboard")  # the dashboard: sign in first
        assert signed_out.status_code == 401
        assert "<form" in signed_out.text and "s3cret-admin-token" not in signed_out.text
        signed_in = client.post(
            "/api/admin/cache/dashboard/sign-in", data={"token": "s3cret-admin-token"}
        )
        assert signed_in.status_code in (302, 303)
        page = client.get("/api/admin/cache/dashboard")
        assert page.status_code == 200 and "<svg" in page.text
    finally:
        Forum.of(app).close()

    closed = create_app(base)
    try:
        assert closed.test_client().get("/api/admin/cache/stats").status_code == 404
        assert closed.test_client().get("/api/admin/cache/dashboard").status_code == 404
    finally:
        Forum.of(closed).close()


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)
