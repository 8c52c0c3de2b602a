"""The Campus Forum deployed as docs/deployment.md says: gunicorn and uvicorn with four workers
on PostgreSQL and a Redis of the test's own, all on 127.0.0.1.

- Four workers started together on an empty database come up with one schema and one copy of
  the demo data (three times in a row), and agree on the generated file secret.
- Workers forked from a master that built the app (``--preload``) serve 800 requests.
- Under page reads, avatar edits and file deletions through HTTP, with Redis killed for five
  seconds and started again, no request fails and every URL a page shows matches its row as
  committed before the page was asked for.
- No access or error log holds a URL signature.

Workers run with ``PYTHONFAULTHANDLER=1``, so a native crash leaves its stack in the log.
Needs ``DATABASE_URL`` (a PostgreSQL server where the user may create databases) and
``redis-server``; skipped without them, failing instead in CI.
"""

from __future__ import annotations

import concurrent.futures
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from sqla_signed_urls import SignatureError
from sqla_signed_urls.signers import LocalSigner

from ..helpers.forum import RAW_SIGNATURE, SECRET, ForumServer, page_files, server_env
from ._processes import RedisServer

pytestmark = pytest.mark.server

FLASK_APP = "examples.campus_forum:create_app()"
ASGI_APP = "examples.campus_forum.asgi:create_app()"


@contextmanager
def empty_database(server_url: str) -> Iterator[tuple[str, Engine]]:
    """A database of its own on the PostgreSQL server of ``server_url`` (created empty,
    dropped afterwards): its URL, and an engine on it for the test's own checks."""
    name = f"forum_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, poolclass=NullPool)
    try:
        yield url, engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        query = text(f"SELECT count(*) FROM {table}")  # noqa: S608 - the test's own table names
        return int(connection.execute(query).scalar_one())


def read_pages(server: ForumServer, pages: int) -> list[str]:
    """Read ``pages`` pages, and every file on the first ones; return what failed."""
    failed = []
    for n in range(pages):
        path = ("/", "/?page=2", f"/users/{n % 8 + 1}", f"/posts/{n % 24 + 1}")[n % 4]
        page = server.get(path)
        if page.status != 200:
            failed.append(f"GET {path}: {page.status}")
            continue
        for _, url in page_files(page.body)[:2]:
            status = server.get(url).status
            if status != 200:
                failed.append(f"GET a file URL on {path}: {status}")
    return failed


def check_logs(server: ForumServer, *, access_log: str) -> None:
    assert server.crashes() == []
    logged = server.log(access_log)
    assert "GET /files/" in logged
    assert "signature=<redacted>" in logged
    assert not RAW_SIGNATURE.search(server.logs()), "a URL signature reached a server log"


# -- cold start ------------------------------------------------------------------------------


def test_four_gunicorn_workers_start_together_on_an_empty_database_three_times(
    real_database_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """No FILES_SECRET either: the workers generate one between them."""
    for attempt in range(3):
        with empty_database(real_database_url) as (url, engine):
            env = server_env(
                DATABASE_URL=url,
                REDIS_URL=redis_server.url(),
                FILE_URL_CACHE_KEY_PREFIX=f"cold{attempt}:file_url:",
                INSTANCE_PATH=str(tmp_path / f"instance-{attempt}"),
            )
            server = ForumServer.gunicorn(tmp_path / f"gunicorn-{attempt}", FLASK_APP, env)
            server.start()
            try:
                server.wait_ready()
                # URLs one worker signed and cached, checked by the others: one secret.
                assert read_pages(server, 40) == []
            finally:
                assert server.stop() == 0
            assert count(engine, "users") == 8
            assert count(engine, "posts") == 24
            assert count(engine, "alembic_version") == 1
            check_logs(server, access_log="access.log")


def test_four_uvicorn_workers_start_together_on_an_empty_database(
    real_database_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """``uvicorn --workers 4``: every worker runs the lifespan (migration, demo data) at
    once, on asyncpg; one of them does the work."""
    for attempt in range(2):
        with empty_database(real_database_url) as (url, engine):
            env = server_env(
                DATABASE_URL=url,
                REDIS_URL=redis_server.url(),
                FILE_URL_CACHE_KEY_PREFIX=f"uvicorn{attempt}:file_url:",
                INSTANCE_PATH=str(tmp_path / f"instance-{attempt}"),
            )
            server = ForumServer.uvicorn(tmp_path / f"uvicorn-{attempt}", env).start()
            try:
                server.wait_ready()
                assert read_pages(server, 40) == []
            finally:
                assert server.stop() == 0
            assert count(engine, "users") == 8
            assert count(engine, "alembic_version") == 1
            check_logs(server, access_log="output.log")


# -- fork safety -----------------------------------------------------------------------------


def test_preloaded_gunicorn_workers_serve_800_requests(
    real_database_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """``--preload``: the master migrates and loads demo data with its engine, then forks
    four workers; each must use connections of its own."""
    with empty_database(real_database_url) as (url, _):
        env = server_env(
            DATABASE_URL=url,
            REDIS_URL=redis_server.url(),
            FILES_SECRET=SECRET,
            INSTANCE_PATH=str(tmp_path / "instance"),
        )
        server = ForumServer.gunicorn(tmp_path / "gunicorn", FLASK_APP, env, preload=True)
        server.start()
        try:
            server.wait_ready()
            paths = [
                ("/", "/?page=2", f"/users/{n % 8 + 1}", f"/posts/{n % 24 + 1}")[n % 4]
                for n in range(800)
            ]
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda p: server.get(p).status, paths))
            assert statuses.count(200) == 800, {s: statuses.count(s) for s in set(statuses)}
            assert read_pages(server, 8) == []
        finally:
            assert server.stop() == 0
        check_logs(server, access_log="access.log")


# -- under load, edits, deletions and a Redis restart ----------------------------------------


@dataclass(frozen=True)
class Version:
    """An object key a file had, and when the request that committed it ran."""

    key: str
    started: float
    returned: float


@dataclass
class Ledger:
    """What the test did and what the pages showed."""

    versions: dict[int, list[Version]]
    deleted: dict[int, Version] = field(default_factory=dict)
    seen: list[tuple[int, str, float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def stale(self) -> list[str]:
        """Every URL that did not match its row: a page asked for after a commit returned
        shows that commit's object key or a later one, and no deleted file."""
        wrong = []
        for file_id, key, started, ended in self.seen:
            gone = self.deleted.get(file_id)
            if gone is not None and gone.returned < started:
                wrong.append(f"file {file_id} shown after its deletion returned")
                continue
            versions = self.versions[file_id]
            last_known = max(i for i, v in enumerate(versions) if v.returned < started)
            allowed = {v.key for v in versions[last_known:] if v.started < ended}
            if key not in allowed:
                wrong.append(f"file {file_id}: a URL for an object key it no longer had")
        return wrong


@pytest.mark.parametrize(
    ("app", "uvicorn_workers", "preload"),
    [(FLASK_APP, False, False), (ASGI_APP, True, True)],
    ids=["flask-gunicorn", "fastapi-gunicorn-uvicorn-workers-preloaded"],
)
def test_the_forum_under_edits_deletions_and_a_redis_restart(
    real_database_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    app: str,
    uvicorn_workers: bool,
    preload: bool,
) -> None:
    signer = LocalSigner(SECRET, base_url="/files")
    with empty_database(real_database_url) as (url, engine):
        env = server_env(
            DATABASE_URL=url,
            REDIS_URL=redis_server.url(),
            FILES_SECRET=SECRET,
            INSTANCE_PATH=str(tmp_path / "instance"),
        )
        server = ForumServer.gunicorn(
            tmp_path / "gunicorn", app, env, preload=preload, uvicorn_workers=uvicorn_workers
        )
        server.start()
        try:
            server.wait_ready()
            ledger = _play(server, engine, redis_server, signer)
        finally:
            assert server.stop() == 0

    assert ledger.failures == []
    assert ledger.requests > 200
    assert len(ledger.seen) > 2000
    assert ledger.stale() == []
    check_logs(server, access_log="access.log")


#: Bounds of the play: the outage starts at OUTAGE_AT s and lasts OUTAGE s; edits and
#: deletions go on until FINISH_AT s, reads one second longer; every loop also has a cap.
OUTAGE_AT, OUTAGE, FINISH_AT = 3.0, 5.0, 13.0


def _play(server: ForumServer, engine: Engine, redis: RedisServer, signer: LocalSigner) -> Ledger:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT id, object_key, file_type, post_id, owner_id FROM files ORDER BY id")
        ).all()
    avatars = {row.owner_id: row.id for row in rows if row.file_type == "avatar"}
    attached = [(row.post_id, row.id) for row in rows if row.file_type != "avatar"]
    doomed = attached[::3][:10]  # deleted while pages are read
    untouched = {f for _, f in attached} - {f for _, f in doomed}
    ledger = Ledger({row.id: [Version(row.object_key, -math.inf, -math.inf)] for row in rows})
    busy_posts = sorted({p for p, _ in doomed})
    finish = threading.Event()
    stop_reading = threading.Event()

    def request(method: str, path: str) -> tuple[int, str, float, float]:
        started = time.monotonic()
        reply = server.post(path) if method == "POST" else server.get(path)
        with ledger.lock:
            ledger.requests += 1
        return reply.status, reply.body, started, time.monotonic()

    def reader(n: int) -> None:
        rng = random.Random(n)
        for i in range(600):
            if stop_reading.is_set():
                return
            path = rng.choice(
                ["/", "/?page=2", f"/users/{rng.randint(1, 8)}", f"/posts/{rng.choice(busy_posts)}"]
            )
            try:
                status, body, started, ended = request("GET", path)
            except OSError as exc:
                ledger.fail(f"GET {path}: {type(exc).__name__}")
                continue
            if status != 200:
                ledger.fail(f"GET {path}: {status}")
                continue
            fetched = False
            for file_id, url in page_files(body):
                try:
                    key = signer.verify(url)
                except SignatureError:
                    ledger.fail(f"GET {path}: a URL for file {file_id} that does not verify")
                    continue
                with ledger.lock:
                    ledger.seen.append((file_id, key, started, ended))
                if file_id in untouched and not fetched and i % 3 == 0:
                    fetched = True
                    status = request("GET", url)[0]
                    if status != 200:
                        ledger.fail(f"GET a file URL on {path}: {status}")

    def editor() -> None:
        users = sorted(avatars)
        for n in range(200):
            if finish.is_set():
                return
            user = users[n % len(users)]
            try:
                status, _, started, returned = request("POST", f"/users/{user}/avatar")
            except OSError as exc:
                ledger.fail(f"POST an avatar: {type(exc).__name__}")
                continue
            if status != 303:
                ledger.fail(f"POST an avatar: {status}")
                continue
            with engine.connect() as connection:  # the row as the commit left it
                key = connection.execute(
                    text("SELECT object_key FROM files WHERE id = :id"), {"id": avatars[user]}
                ).scalar_one()
            with ledger.lock:
                ledger.versions[avatars[user]].append(Version(key, started, returned))
            time.sleep(0.1)

    def deleter() -> None:
        for post_id, file_id in doomed:
            if finish.wait(0.8):
                return
            try:
                status, _, started, returned = request(
                    "POST", f"/posts/{post_id}/files/{file_id}/delete"
                )
            except OSError as exc:
                ledger.fail(f"POST a deletion: {type(exc).__name__}")
                continue
            if status != 303:
                ledger.fail(f"POST a deletion: {status}")
                continue
            with ledger.lock:
                ledger.deleted[file_id] = Version("", started, returned)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=editor), threading.Thread(target=deleter)]
    begin = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(OUTAGE_AT)
        redis.kill()
        outage_ends = time.monotonic() + OUTAGE
        while time.monotonic() < outage_ends:  # the health check keeps answering
            if server.get("/healthz").status != 200:
                ledger.fail("GET /healthz during the outage")
            time.sleep(0.5)
        redis.start()
        time.sleep(max(0.0, FINISH_AT - (time.monotonic() - begin)))
    finally:
        finish.set()
        time.sleep(1.0)
        stop_reading.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a request hung"

    # Afterwards, every page shows each avatar's last object key and no deleted file.
    for user, file_id in avatars.items():
        profile = server.get(f"/users/{user}")
        shown = {signer.verify(u) for f, u in page_files(profile.body) if f == file_id}
        assert shown == {ledger.versions[file_id][-1].key}
    for post_id in busy_posts:
        page = server.get(f"/posts/{post_id}")
        assert not {f for f, _ in page_files(page.body)} & set(ledger.deleted)
    assert len(ledger.deleted) >= 5
    assert re.search(r"redis", server.get("/healthz").body)
    return ledger
