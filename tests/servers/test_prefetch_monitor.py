"""``urls.prefetch()`` seen from the Redis server itself (``MONITOR``): a page with several
classes and eager-loaded relationships costs exactly one ``MGET``, and no ``GET`` follows
when its URLs are read. Needs ``REDIS_URL`` (skips on a laptop, fails in CI without it)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, selectinload

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.testing import FakeSigner

from ..conftest import wait_until
from ..orm.test_prefetch import Author, PBase, Post, forum, page_files, read_page

__all__ = ["forum"]  # the fixture, imported for its use below


class Monitor:
    """The commands the server runs that name a key under ``prefix``, read by ``MONITOR`` in
    a thread until the ``ECHO`` of a marker arrives."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis_py.Redis.from_url(url)
        self.prefix = prefix
        self.marker = f"monitor-done-{uuid.uuid4().hex}"
        self.commands: list[str] = []
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        with self.client.monitor() as monitor:
            self._started.set()
            for _ in range(100_000):  # bounded: the marker ends it long before
                command = monitor.next_command()["command"]
                if self.marker in command:
                    return
                if self.prefix in command:
                    self.commands.append(command.split(" ", 1)[0].upper())

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.echo(self.marker)
        self._thread.join(30)
        self.client.close()


@pytest.fixture
def monitored_urls(real_redis_url: str, key_prefix: str) -> Iterator[SignedURLs]:
    urls = SignedURLs(FakeSigner(), redis=real_redis_url, key_prefix=key_prefix)
    urls.install(PBase)
    urls.channel.ensure_started()
    wait_until(lambda: urls.channel.live, "the invalidation listener")
    yield urls
    urls.uninstall()
    urls.close()


def test_a_prefetched_page_is_one_mget_on_the_server(
    real_redis_url: str, monitored_urls: SignedURLs, forum: Any, engine: Engine, key_prefix: str
) -> None:
    urls = monitored_urls
    stmt = select(Post).options(
        selectinload(Post.author).selectinload(Author.avatar),
        selectinload(Post.images),
        urls.prefetch(),
    )
    with Session(engine) as session:  # cold: sign and write what is missing
        posts = list(session.scalars(stmt))
        read_page(posts)
    urls.clear_local()
    with Session(engine) as session, Monitor(real_redis_url, key_prefix) as seen:
        posts = list(session.scalars(stmt))
        assert len(page_files(posts)) > 30
        read_page(posts)
    assert seen.commands == ["MGET"], seen.commands
