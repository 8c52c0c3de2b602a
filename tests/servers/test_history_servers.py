"""The fleet history and the dashboard seen from real servers: ``MONITOR`` on the Redis of
``REDIS_URL`` shows the history adds no command to the URL read path, writes nothing while
nobody reads URLs, and that a dashboard page costs the same few commands (no ``SCAN``, no
``KEYS``) whatever the cache size; and the history on a 3-master Redis Cluster.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from flask import Flask
from sqlalchemy import create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import CacheService, ObjectKey, SignedURLs
from sqla_signed_urls.flask import admin_blueprint
from sqla_signed_urls.testing import FakeSigner

from ..conftest import Base, File, add_files, wait_until
from ._groups import RedisClusterGroup
from .test_prefetch_monitor import Monitor

TOKEN = "servers-admin-token-0a9b8c"
PAGE = "/api/admin/cache/dashboard"


class FullMonitor(Monitor):
    """:class:`Monitor` keeping each command whole (name and arguments, as MONITOR prints
    them), so commands on URL keys and on bookkeeping keys can be told apart."""

    def _read(self) -> None:
        with self.client.monitor() as monitor:
            self._started.set()
            for _ in range(1_000_000):  # bounded: the marker ends it long before
                command = monitor.next_command()["command"]
                if self.marker in command:
                    return
                if self.prefix in command:
                    self.commands.append(command)


def kind(command: str, prefix: str) -> str:
    """``MGET url``, ``ZADD #history`` and the like: the command and what it names."""
    name = command.split(" ", 1)[0].upper()
    found = re.search(re.escape(prefix) + r"(#[a-z]+)?", command)
    what = found.group(1) if found and found.group(1) else "url"
    return f"{name} {what}"


@pytest.fixture
def recording(real_redis_url: str, key_prefix: str) -> Iterator[SignedURLs]:
    urls = SignedURLs(
        FakeSigner(),
        redis=real_redis_url,
        key_prefix=key_prefix,
        history_interval=1,
        local_cache_size=0,
    )
    urls.install(Base)
    yield urls
    urls.uninstall()
    urls.close()
    with redis_py.Redis.from_url(real_redis_url) as client:
        keys = list(client.scan_iter(match=key_prefix + "*"))
        if keys:
            client.unlink(*keys)


def test_the_history_adds_no_command_to_the_read_path_and_none_while_idle(
    real_redis_url: str, recording: SignedURLs, db: sessionmaker[Session], key_prefix: str
) -> None:
    urls = recording
    add_files(db, *(f"m/{i}.png" for i in range(25)))
    with db() as session:
        files = list(session.scalars(select(File)))
    urls.resolve(files)  # cold: sign and write
    wait_until(lambda: urls.channel.live, "the listener")
    probe = redis_py.Redis.from_url(real_redis_url)
    history_key = key_prefix + "#history"
    before = probe.zcard(history_key)

    reads = 0
    with FullMonitor(real_redis_url, key_prefix) as seen:
        started = time.monotonic()
        while probe.zcard(history_key) < before + 2:  # two intervals recorded meanwhile
            assert urls.resolve(files)
            reads += 1
            time.sleep(0.01)
            assert time.monotonic() - started < 60, "no history point while reading"
        elapsed = time.monotonic() - started
    kinds = Counter(kind(command, key_prefix) for command in seen.commands)

    assert kinds.pop("MGET url") == reads, "every page view is one MGET"
    assert kinds.pop("ZCARD #history") >= 1  # the test's own probe
    assert not [k for k in kinds if k.endswith(" url")], f"other commands on URL keys: {kinds}"
    recorded = kinds["ZADD #history"]
    assert 2 <= recorded <= elapsed + 1
    assert kinds["SET #lock"] <= elapsed + 1
    assert set(kinds) <= {
        "HINCRBY #stats",  # the counter flush, once a second
        "SET #lock",  # the election, once an interval
        "HGETALL #stats",  # the elected process's snapshot
        "ZCOUNT #expiry",
        "ZADD #history",
        "ZREMRANGEBYRANK #history",
    }, kinds
    assert sum(kinds.values()) < reads, "background work does not grow with the reads"

    time.sleep(1.5)  # the last flush and point of those reads
    with FullMonitor(real_redis_url, key_prefix) as idle:
        time.sleep(4)  # four intervals without a URL read
    assert idle.commands == [], "an idle process sends nothing"
    probe.close()


def test_a_dashboard_page_costs_the_same_commands_whatever_the_cache_size(
    real_redis_url: str, key_prefix: str
) -> None:
    urls = SignedURLs(FakeSigner(), redis=real_redis_url, key_prefix=key_prefix)
    app = Flask(__name__)
    app.register_blueprint(admin_blueprint(CacheService(urls), token=TOKEN))
    client = app.test_client()
    assert client.post(f"{PAGE}/sign-in", data={"token": TOKEN}).status_code == 303
    writer = redis_py.Redis.from_url(real_redis_url)
    now = int(time.time())
    costs = []
    try:
        for size in (50, 20_000):
            pipe = writer.pipeline(transaction=False)
            for i in range(size):
                pipe.set(f"{key_prefix}{i}", b"x", ex=3000)
            pipe.zadd(
                f"{key_prefix}#expiry",
                {f"{key_prefix}{i}": now + 30 + i % 2600 for i in range(size)},
            )
            pipe.execute()
            with FullMonitor(real_redis_url, key_prefix) as seen:
                assert client.get(PAGE).status_code == 200
            costs.append(Counter(kind(command, key_prefix) for command in seen.commands))
    finally:
        urls.close()
        keys = list(writer.scan_iter(match=key_prefix + "*"))
        if keys:
            writer.unlink(*keys)
        writer.close()
    assert costs[0] == costs[1]
    assert not [k for k in costs[0] if k.split()[0] in ("SCAN", "KEYS")]
    assert costs[0]["ZCOUNT #expiry"] == 1 + 10  # the key count, then the histogram's edges
    assert costs[0]["HGETALL #stats"] == 1 and costs[0]["ZREVRANGEBYSCORE #history"] == 1


# -- Redis Cluster -------------------------------------------------------------------------------


class HBase(DeclarativeBase):
    pass


class HFile(HBase):
    __tablename__ = "history_cluster_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


@pytest.fixture
def cluster_db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'history_cluster.db'}")
    HBase.metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        session.add_all(HFile(id=i, object_key=f"c/{i}.png") for i in range(1, 41))
        session.commit()
    yield factory
    engine.dispose()


def test_the_history_on_a_redis_cluster(
    redis_cluster: RedisClusterGroup, cluster_db: sessionmaker[Session]
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:file_url:"
    urls = SignedURLs(
        FakeSigner(),
        redis=redis_cluster.url(),
        key_prefix=prefix,
        history_interval=1,
        local_cache_size=0,
    )
    urls.install(HBase)
    service = CacheService(urls)
    try:
        with cluster_db() as session:
            files = list(session.scalars(select(HFile)))

        def read() -> bool:
            urls.resolve(files)
            time.sleep(0.05)
            return len(service.get_cache_history()) >= 3

        wait_until(read, "three points on the cluster", limit=60)
        points = service.get_cache_history()
        assert [p["keys"] for p in points[1:]] == [40] * (len(points) - 1)
        assert all(p["memory_used_bytes"] > 0 for p in points), "memory of every master"
        assert points[-1]["hits"] > points[0]["hits"]
        buckets = service.get_expiry_histogram()
        assert sum(b["keys"] for b in buckets) == 40
        assert service.clear_file_url_cache() == 40
        assert service.get_cache_history()[: len(points)] == points

        app = Flask(__name__)
        app.register_blueprint(admin_blueprint(service, token=TOKEN))
        client = app.test_client()
        client.post(f"{PAGE}/sign-in", data={"token": TOKEN})
        page = client.get(f"{PAGE}?window=24h")
        assert page.status_code == 200
        svg = re.search(r'data-chart="keys".*?</svg>', page.text, re.S)
        assert svg is not None
        drawn = re.findall(r'data-series="keys" points="([^"]*)"', svg.group(0))
        assert sum(len(p.split()) for p in drawn) == len(service.get_cache_history())

        async def twins() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            try:
                return await service.aget_cache_history(), await service.aget_expiry_histogram()
            finally:
                await urls.aclose()

        history, histogram = asyncio.run(twins())
        assert history[: len(points)] == points
        assert sum(b["keys"] for b in histogram) == 0
    finally:
        urls.uninstall()
        urls.close()
        probe = redis_py.RedisCluster(startup_nodes=redis_cluster.startup_nodes())
        for key in list(probe.scan_iter(match=prefix + "*")):
            probe.unlink(key)
        probe.close()
        urls.redis.close()
