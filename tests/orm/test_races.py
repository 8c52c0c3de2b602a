"""Races in threads: many readers against concurrent commits, and a reader that stalls while
signing the old object key.

The property checked everywhere: a read made by a session that started after a commit
returned never serves a URL for another object key than the committed one, and no read ever
raises. Every commit is recorded with the time it began and the time ``commit()`` returned;
every read with the time its session started and the time it got its URL. The object key is
taken back out of the served URL (FakeSigner URLs carry it in their path).

Counts: the full workload (16 threads, 1,000 files, 50,000 reads) runs when ``REDIS_URL`` or
``DATABASE_URL`` is set (CI); the default run on SQLite + fakeredis uses a smaller one so the
suite stays fast. The same check across four processes is in
``tests/servers/test_cross_process.py``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.testing import FakeSigner

from ..conftest import DATABASE_URL, REDIS_URL
from ..helpers.races import (
    THREADS,
    Commit,
    Database,
    RaceBase,
    RaceFile,
    Read,
    insert_rows,
    key_of,
    object_key,
    open_database,
    violations,
)

FULL = bool(REDIS_URL or DATABASE_URL)
FILES = 1000 if FULL else 100
READS = 50_000 if FULL else 8_000


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """PostgreSQL in a schema of its own when DATABASE_URL is set, else a SQLite file in WAL."""
    with open_database(tmp_path) as database:
        yield database


# -- 16 threads --------------------------------------------------------------------------------


@pytest.fixture
def shared_redis() -> Iterator[tuple[Any, str]]:
    """REDIS_URL with a key prefix of its own, or one fakeredis server for all threads."""
    prefix = f"race{uuid.uuid4().hex[:8]}:file_url:"
    if REDIS_URL:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        yield REDIS_URL, prefix
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.unlink(*keys)
        client.close()
        return
    yield fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix


def test_threads_never_serve_another_key_than_the_committed_one(
    database: Database, shared_redis: tuple[Any, str]
) -> None:
    redis_arg, prefix = shared_redis
    factory = sessionmaker(database.engine, expire_on_commit=False)
    insert_rows(factory, range(1, FILES + 1))
    urls = SignedURLs(FakeSigner(), redis=redis_arg, key_prefix=prefix, local_cache_size=10_000)
    urls.install(RaceBase)
    history: dict[int, list[Commit]] = defaultdict(list)
    reads: list[list[Read]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    done = threading.Event()
    hot = list(range(1, FILES + 1))

    def writer(me: int) -> None:
        rng = random.Random(me)
        mine = [i for i in hot if i % 2 == me]
        version = dict.fromkeys(mine, 0)
        alive = dict.fromkeys(mine, True)
        try:
            while not done.is_set():
                file_id = rng.choice(mine)
                version[file_id] += 1
                new_key = object_key(file_id, version[file_id])
                begin = time.monotonic()
                with factory() as session:
                    if not alive[file_id]:
                        session.add(RaceFile(id=file_id, object_key=new_key))
                        key: str | None = new_key
                    elif rng.random() < 0.1:
                        session.delete(session.get(RaceFile, file_id))
                        key = None
                    else:
                        session.get(RaceFile, file_id).object_key = new_key
                        key = new_key
                    session.commit()
                history[file_id].append(Commit(begin, time.monotonic(), key))
                alive[file_id] = key is not None
                time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)

    def reader(me: int) -> None:
        rng = random.Random(1000 + me)
        out = reads[me]
        try:
            while len(out) < READS // THREADS:
                started = time.monotonic()
                with factory() as session:
                    if rng.random() < 0.5:
                        file = session.get(RaceFile, rng.choice(hot))
                        pairs = [] if file is None else [(file, file.url)]
                    else:
                        ids = rng.sample(hot, 5)
                        files = list(session.scalars(select(RaceFile).where(RaceFile.id.in_(ids))))
                        pairs = list(zip(files, urls.resolve(files), strict=True))
                    ended = time.monotonic()
                    for file, url in pairs:
                        assert file.object_key is not None
                        out.append(Read(started, ended, file.id, key_of(url), file.object_key))
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    readers = [threading.Thread(target=reader, args=(r,)) for r in range(THREADS)]
    try:
        for t in writers + readers:
            t.start()
        for t in readers:
            t.join()
    finally:
        done.set()
        for t in writers + readers:
            t.join()
        urls.uninstall()
        urls.close()
        if not isinstance(redis_arg, str):
            redis_arg.close()
        else:
            urls.redis.close()
    assert errors == []
    all_reads = [r for rs in reads for r in rs]
    commits = sum(len(c) for c in history.values())
    assert len(all_reads) >= READS
    assert commits > 0
    bad = violations(history, all_reads, lambda i: object_key(i, 0))
    assert bad == [], f"{len(bad)} bad reads of {len(all_reads)}, e.g. {bad[:3]}"
    assert urls.stats.hits > 0  # the caches were in play, not just signing


# -- the slow reader ---------------------------------------------------------------------------


class GatedSigner(FakeSigner):
    """Blocks signing of one object key until the test opens the gate."""

    def __init__(self, gated_key: str) -> None:
        super().__init__()
        self.gated_key = gated_key
        self.entered = threading.Event()
        self.gate = threading.Event()

    def sign(self, object_key: str, *, expires_at: int) -> str:
        if object_key == self.gated_key and not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return super().sign(object_key, expires_at=expires_at)


@pytest.mark.parametrize("local_cache_size", [0, 10_000], ids=["no-L1", "L1"])
@pytest.mark.parametrize("path", ["attribute", "resolve"])
def test_slow_reader_cannot_make_the_old_url_served_again(
    database: Database, local_cache_size: int, path: str
) -> None:
    factory = sessionmaker(database.engine, expire_on_commit=False)
    insert_rows(factory, range(1, 3))
    old, new = object_key(1, 0), object_key(1, 1)
    server = fakeredis.FakeServer()
    raw = fakeredis.FakeRedis(server=server)
    signer = GatedSigner(old)
    prefix = "slow:file_url:"
    urls = SignedURLs(signer, redis=raw, key_prefix=prefix, local_cache_size=local_cache_size)
    urls.install(RaceBase)
    # "Another process" on the same Redis, with its own in-process layer.
    other = SignedURLs(FakeSigner(), redis=fakeredis.FakeRedis(server=server), key_prefix=prefix)
    other.install(RaceBase)
    slow_result: list[str | None] = []
    errors: list[BaseException] = []

    def slow_reader() -> None:
        try:
            with factory() as session:
                file = session.get(RaceFile, 1)
                got = urls.url_for(file) if path == "attribute" else urls.resolve([file])[0]
                slow_result.append(got)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow_reader)
    try:
        thread.start()
        assert signer.entered.wait(30), "the slow reader never started signing"
        with factory() as session:
            session.get(RaceFile, 1).object_key = new
            session.commit()  # invalidates while the slow reader still holds the old key
        with factory() as session:  # a session after the commit, while the old signing hangs
            assert key_of(urls.url_for(session.get(RaceFile, 1))) == new
        signer.gate.set()
        thread.join(30)
        assert not thread.is_alive()
        assert errors == []
        assert key_of(slow_result[0]) == old  # it started before the commit: fine

        for _ in range(3):
            with factory() as session:
                file = session.get(RaceFile, 1)
                assert key_of(urls.url_for(file)) == new
                assert key_of(urls.resolve([file])[0]) == new
                assert key_of(other.url_for(file)) == new
                assert key_of(other.resolve([file])[0]) == new
    finally:
        signer.gate.set()
        thread.join(30)
        for u in (urls, other):
            u.uninstall()
            u.close()


def test_slow_reader_value_written_after_the_invalidation_is_never_served(
    database: Database,
) -> None:
    """The exact interleaving: the stale value lands in Redis after the commit's UNLINK."""
    factory = sessionmaker(database.engine, expire_on_commit=False)
    insert_rows(factory, range(1, 3))
    old, new = object_key(1, 0), object_key(1, 1)
    server = fakeredis.FakeServer()
    raw = fakeredis.FakeRedis(server=server)
    signer = GatedSigner(old)
    prefix = "slow2:file_url:"
    urls = SignedURLs(signer, redis=raw, key_prefix=prefix, local_cache_size=0)
    urls.install(RaceBase)
    thread = threading.Thread(target=lambda: _read_url(factory, 1))
    try:
        thread.start()
        assert signer.entered.wait(30)
        with factory() as session:
            session.get(RaceFile, 1).object_key = new
            session.commit()
        assert raw.exists(f"{prefix}1") == 0
        signer.gate.set()
        thread.join(30)
        stale = raw.get(f"{prefix}1")
        assert stale is not None and old.encode() in stale  # the slow write did land
        signer.calls.clear()
        with factory() as session:
            file = session.get(RaceFile, 1)
            assert key_of(file.url) == new
        assert [key for key, _ in signer.calls] == [new]  # signed anew, stale value ignored
        fresh = raw.get(f"{prefix}1")
        assert fresh is not None and new.encode() in fresh and old.encode() not in fresh
    finally:
        signer.gate.set()
        thread.join(30)
        urls.uninstall()
        urls.close()


def _read_url(factory: sessionmaker[Session], file_id: int) -> None:
    with factory() as session:
        file = session.get(RaceFile, file_id)
        assert file is not None
        _ = file.url
