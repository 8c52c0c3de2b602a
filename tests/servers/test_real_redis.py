"""Against the Redis in ``REDIS_URL`` (and PostgreSQL in ``DATABASE_URL``): the db index of a
URL, connections closed by ``close()``, the whole flow end to end, and a subscriber connection
the server kills while an invalidation is on its way. Without the URLs these skip; with
``SQLA_SIGNED_URLS_REQUIRE_SERVERS=1`` they fail instead.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_py
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.cache.redis import client_from_url
from sqla_signed_urls.testing import FakeSigner

from ..conftest import RUN_ID, Base, File, add_files, wait_until
from ..helpers.read_path import CallerCounting, Doc, add, load, unlink_prefix, warm


def test_redis_db_index_is_honoured(real_redis_url: str, db: Any, key_prefix: str) -> None:
    import redis

    base = real_redis_url.rsplit("/", 1)[0]
    urls = SignedURLs(FakeSigner(), redis=f"{base}/2", key_prefix=key_prefix, local_cache_size=0)
    urls.install(Base)
    try:
        (fid,) = add_files(db, "db2.png")
        with db() as session:
            assert session.get(File, fid).url  # type: ignore[union-attr]
        db2 = redis.Redis.from_url(f"{base}/2")
        try:
            key = f"{key_prefix}{fid}"
            assert db2.exists(key)
            assert db2.get(key).endswith(b" db2.png")
            db2.unlink(key)
        finally:
            db2.close()
    finally:
        urls.uninstall()
        urls.close()


def test_close_closes_the_connections_of_a_client_it_built_and_leaves_a_passed_one_open(
    real_redis_url: str, db: Any, key_prefix: str
) -> None:
    """Connections seen from the server (CLIENT LIST, by a client name of this test's own)."""
    import uuid

    import redis

    name = f"close-test-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(real_redis_url)

    def connections() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") == name)

    sep = "&" if "?" in real_redis_url else "?"
    built = SignedURLs(
        FakeSigner(), redis=f"{real_redis_url}{sep}client_name={name}", key_prefix=key_prefix
    )
    passed = redis.Redis.from_url(real_redis_url, client_name=name)
    given = SignedURLs(FakeSigner(), redis=passed, key_prefix=key_prefix)
    try:
        built.install(Base)
        (fid,) = add_files(db, "close.png")
        with db() as session:
            assert built.url_for(session.get(File, fid))  # a connection, and the listener's
        assert given.redis.ping()
        assert connections() >= 3
        built.uninstall()
        built.close()
        wait_until(lambda: connections() == 1, "the built client's connections to close")
        given.close()
        time.sleep(0.2)
        assert connections() == 1, "close() closed a client the caller passed in"
        assert passed.ping()
    finally:
        passed.close()
        admin.close()


def test_real_servers_end_to_end(
    real_redis_url: str, real_database_url: str, db: Any, key_prefix: str
) -> None:
    """The whole flow on PostgreSQL and a real Redis (CI sets both URLs)."""
    import redis

    urls = SignedURLs(FakeSigner(), redis=real_redis_url, key_prefix=key_prefix)
    urls.install(Base)
    client = redis.Redis.from_url(real_redis_url)
    try:
        (fid,) = add_files(db, "pg.png")
        with db() as session:
            file = session.get(File, fid)
            assert file is not None and "pg.png" in (file.url or "")
            assert client.ttl(f"{key_prefix}{fid}") > 0
            file.object_key = "pg2.png"
            session.commit()
            assert not client.exists(f"{key_prefix}{fid}")
            assert "pg2.png" in (file.url or "")
        assert str(db.kw["bind"].url).startswith("postgresql")
    finally:
        client.close()
        urls.uninstall()
        urls.close()


@pytest.mark.server
@pytest.mark.parametrize(
    "kind",
    [
        "client_from_url",
        "redis-py defaults",
    ],
)
def test_killed_pubsub_connection_loses_no_invalidation(
    make: Any,
    sessions: sessionmaker[Session],
    open_session: Callable[[], Session],
    real_redis_url: str,
    kind: str,
) -> None:
    """Kill this process's subscriber connection in the same transaction that publishes an
    invalidation, so the message is lost for sure. Whether redis-py reconnects silently
    (the library's own client settings) or raises (redis-py defaults), the L1 must not keep
    serving what it missed: the whole L1 goes, and the listener subscribes again."""
    prefix = f"fp{RUN_ID}{uuid.uuid4().hex[:6]}:file_url:"
    name = f"fp-{uuid.uuid4().hex[:10]}"
    url = f"{real_redis_url}?client_name={name}"
    if kind == "client_from_url":
        raw = client_from_url(url, socket_timeout=0.25)  # what SignedURLs(redis=<url>) builds
    else:
        raw = redis_py.Redis.from_url(url)
    admin = redis_py.Redis.from_url(real_redis_url)
    client = CallerCounting(raw)
    try:
        urls = make(redis=client, key_prefix=prefix, retry_after=0.1)
        add(sessions, Doc, "a.png", "b.png")
        a, b = load(open_session(), Doc)
        warm(urls, a, b)

        def subscriber() -> str | None:
            found = [c["id"] for c in admin.client_list(_type="pubsub") if c["name"] == name]
            return found[0] if found else None

        killed = subscriber()
        assert killed is not None
        key = urls.cache_key(a)
        assert key is not None
        admin.unlink(key)
        pipe: Any = admin.pipeline(transaction=True)
        with pipe:  # MULTI: the message is queued for the subscriber, then the subscriber goes
            pipe.publish(f"{prefix}#invalidate", key)
            pipe.execute_command("CLIENT", "KILL", "ID", killed)
            pipe.execute()

        def resubscribed() -> bool:
            now = subscriber()
            return now is not None and now != killed and urls.channel.live

        wait_until(resubscribed, "subscribing again")
        client.reset()
        _ = a.url
        assert client.round_trips >= 1, "the L1 served an entry whose invalidation it missed"
        client.reset()
        _ = b.url
        assert client.round_trips == 1, "the L1 outlived a broken channel"
    finally:
        unlink_prefix(admin, prefix)
        admin.close()
        raw.close()
