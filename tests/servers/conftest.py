"""Server fixtures: ``redis-server`` processes (and a silent socket) started and stopped by pytest.

Every server listens on 127.0.0.1 only, on a free port, with its files under the test's
temporary directory; every wait has a deadline; every process is killed at teardown, and at
interpreter exit as a safety net (see ``_processes.py``). Without ``redis-server`` on ``PATH`` a
test asking for one skips with the reason, or fails when ``SQLA_SIGNED_URLS_REQUIRE_SERVERS=1``.

Scopes: a standalone server is cheap and tests kill, restart or fill it, so each test gets its
own. A cluster is slow to start, so ``redis_cluster`` serves a whole module (its tests use key
prefixes of their own and never kill it); a test that kills a master takes
``disposable_redis_cluster``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import REDIS_URL
from ._groups import RedisClusterGroup, SentinelGroup
from ._processes import (
    ACL_PASSWORD,
    ACL_USER,
    RedisServer,
    SilentServer,
    require_redis_server,
)


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start standalone servers with ``RedisServer`` options (``port=``, ``extra_config=``, ...)
    whenever the test says; all of them are killed at teardown."""
    require_redis_server()
    started: list[RedisServer] = []

    def start(name: str = "redis", **options: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"{name}-{len(started)}", **options)
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.close()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A standalone server of the test's own: it may ``kill()`` and ``start()`` it again (same
    port, empty)."""
    return redis_server_factory("redis")


@pytest.fixture
def redis_durable_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A server that keeps its data across a kill (AOF, fsync always): a real outage."""
    return redis_server_factory("durable", extra_config="appendonly yes\nappendfsync always")


@pytest.fixture
def redis_acl_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A server with the default user off and an ACL user ``ACL_USER`` / ``ACL_PASSWORD``."""
    return redis_server_factory("acl", user=ACL_USER, password=ACL_PASSWORD)


@pytest.fixture
def redis_tls_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """TLS only (``rediss://``, a CA of its own in ``ca_file``) with the ACL user of
    ``redis_acl_server``."""
    return redis_server_factory("tls", tls=True, user=ACL_USER, password=ACL_PASSWORD)


@pytest.fixture
def redis_url_or_server(request: pytest.FixtureRequest) -> str:
    """``REDIS_URL`` when it is set, else the URL of a throwaway server of the test's own."""
    if REDIS_URL:
        return REDIS_URL
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterGroup]:
    """Three masters sharing the slots, no replicas; one per module (needs ``redis-cli`` too)."""
    group = RedisClusterGroup(tmp_path_factory.mktemp("cluster"))
    group.start()
    yield group
    group.close()


@pytest.fixture
def disposable_redis_cluster(tmp_path: Path) -> Iterator[RedisClusterGroup]:
    """A cluster of the test's own, for a test that kills one of its masters."""
    with RedisClusterGroup(tmp_path / "disposable-cluster") as group:
        yield group


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A master watched by one sentinel (quorum 1) as ``SentinelGroup.service_name``."""
    group = SentinelGroup(tmp_path / "sentinel")
    try:
        group.start()
    except RuntimeError as exc:
        pytest.skip(f"redis-server --sentinel cannot run here: {exc}")
    yield group
    group.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    """A socket on 127.0.0.1 that accepts connections and never answers (no redis-server
    needed)."""
    with SilentServer() as silent:
        yield silent
