"""Other processes: a commit in this process drops the L1 entry of a child process, and
readers in four worker processes stop serving an old URL within a second of each commit.

The four-process race runs on the Redis in ``REDIS_URL``, or on a throwaway ``redis-server``.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.testing import FakeSigner

from ..conftest import RUN_ID
from ..helpers.races import (
    Commit,
    Database,
    RaceBase,
    RaceFile,
    Read,
    insert_rows,
    object_key,
    open_database,
    violations,
)
from ..helpers.read_path import PATIENCE, Doc, FastBase, unlink_prefix

# -- the L1 of a child process -----------------------------------------------------------------


CHILD = textwrap.dedent(
    """
    import sys, threading, time

    import redis
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    from sqla_signed_urls import ObjectKey, SignedURLs
    from sqla_signed_urls.testing import CountingRedis, FakeSigner

    redis_url, prefix, db_url = sys.argv[1:4]

    class Base(DeclarativeBase):
        pass

    class Doc(Base):
        __tablename__ = "fp_docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        object_key: Mapped[str | None] = mapped_column(ObjectKey(512))

    class MainThreadCounting(CountingRedis):
        def _count(self, name):
            if threading.current_thread() is threading.main_thread():
                super()._count(name)

    def say(*words):
        print(*words, flush=True)

    def wait_until(condition, what):
        deadline = time.monotonic() + 20
        while not condition():
            if time.monotonic() > deadline:
                say("timeout", what)
                sys.exit(1)
            time.sleep(0.005)

    client = MainThreadCounting(redis.Redis.from_url(redis_url))
    urls = SignedURLs(FakeSigner(), redis=client, key_prefix=prefix, local_cache_size=100)
    urls.install(Base)
    session = Session(create_engine(db_url))
    first, second = session.scalars(select(Doc).order_by(Doc.id)).all()
    first.url, second.url
    wait_until(lambda: urls.channel.live, "listener")
    first.url, second.url
    client.reset()
    for _ in range(10):
        first.url, second.url
    say("ready", client.round_trips)

    sys.stdin.readline()  # the parent process has committed a new object key for `first`
    started = time.monotonic()

    def dropped():
        client.reset()
        first.url  # loaded before the commit: only the L1 can answer without a round trip
        return client.round_trips > 0

    wait_until(dropped, "invalidation")
    waited = time.monotonic() - started
    client.reset()
    second.url
    second_trips = client.round_trips
    session.expire_all()
    say("dropped", f"{waited:.3f}", second_trips, first.url)
    urls.close()
    """
)


class Child:
    """A child process speaking one line at a time; every read is bounded."""

    def __init__(self, stderr: Path, *args: str) -> None:
        self.stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._pump = threading.Thread(target=self._read_stdout, daemon=True)
        self._pump.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def read(self) -> list[str]:
        try:
            return self.lines.get(timeout=PATIENCE * 3).split()
        except queue.Empty:
            self.close(kill=True)
            pytest.fail(f"the child process said nothing; stderr:\n{self.stderr_path.read_text()}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self, *, kill: bool = False) -> int:
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._pump.join(PATIENCE)
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            if stream is not None and not stream.closed:
                stream.close()
        return self.proc.returncode


@pytest.mark.server
def test_commit_in_one_process_drops_the_l1_entry_in_another(
    real_redis_url: str, tmp_path: Path
) -> None:
    prefix = f"fp{RUN_ID}{uuid.uuid4().hex[:6]}:file_url:"
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = create_engine(db_url)
    FastBase.metadata.create_all(engine)
    raw = redis_py.Redis.from_url(real_redis_url)
    urls = SignedURLs(FakeSigner(), redis=raw, key_prefix=prefix, local_cache_size=0)
    urls.install(FastBase)
    child: Child | None = None
    try:
        with Session(engine) as session:
            session.add_all([Doc(id=1, object_key="old.png"), Doc(id=2, object_key="b.png")])
            session.commit()
        child = Child(tmp_path / "child.err", real_redis_url, prefix, db_url)
        assert child.read() == ["ready", "0"]  # both URLs served by the child's L1

        with Session(engine) as session:
            doc = session.get(Doc, 1)
            assert doc is not None
            doc.object_key = "new.png"
            session.commit()  # this process publishes the invalidation
        child.send("go")
        word, _waited, second_trips, fresh_url = child.read()
        assert word == "dropped"
        assert second_trips == "0"  # the other entry stayed in the child's L1
        assert "new.png" in fresh_url
        assert child.close() == 0, (tmp_path / "child.err").read_text()
    finally:
        if child is not None:
            child.close(kill=True)
        urls.uninstall()
        urls.close()
        unlink_prefix(raw, prefix)
        raw.close()
        engine.dispose()


# -- 4 processes -------------------------------------------------------------------------------


ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4


#: Stop waiting for worker processes after this long (they normally finish in seconds).
WORKER_DEADLINE = 120.0


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """PostgreSQL in a schema of its own when DATABASE_URL is set, else a SQLite file in WAL."""
    with open_database(tmp_path) as database:
        yield database


def test_four_processes_stop_serving_the_old_url_within_a_second(
    database: Database, redis_url_or_server: str, tmp_path: Path
) -> None:
    factory = sessionmaker(database.engine, expire_on_commit=False)
    hot = list(range(1, 21))
    insert_rows(factory, range(1, 21))
    prefix = f"race4p{uuid.uuid4().hex[:8]}:file_url:"
    stop = tmp_path / "stop"
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"worker{n}.log" for n in range(PROCESSES)]
    readies = [tmp_path / f"worker{n}.ready" for n in range(PROCESSES)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    history: dict[int, list[Commit]] = defaultdict(list)
    urls = SignedURLs(FakeSigner(), redis=redis_url_or_server, key_prefix=prefix)
    urls.install(RaceBase)
    try:
        for n in range(PROCESSES):
            args = {
                "db_url": database.url,
                "schema": database.schema,
                "redis_url": redis_url_or_server,
                "prefix": prefix,
                "ids": hot,
                "log": str(logs[n]),
                "ready": str(readies[n]),
                "stop": str(stop),
                "max_seconds": WORKER_DEADLINE,
            }
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "from tests.helpers.races import worker_main; worker_main()",
                        json.dumps(args),
                    ],
                    cwd=ROOT,
                    env=env,
                )
            )
        end = time.monotonic() + WORKER_DEADLINE
        while not all(r.exists() for r in readies):
            assert all(p.poll() is None for p in procs), "a worker died at start"
            assert time.monotonic() < end, "workers did not start in time"
            time.sleep(0.05)

        rng = random.Random(4)
        for version in range(1, 41):
            file_id = rng.choice(hot)
            begin = time.monotonic()
            with factory() as session:
                session.get(RaceFile, file_id).object_key = object_key(file_id, version)
                session.commit()
            history[file_id].append(Commit(begin, time.monotonic(), object_key(file_id, version)))
            time.sleep(0.05)
        time.sleep(0.3)  # let every worker read the final state a few times
    finally:
        stop.touch()
        for p in procs:
            try:
                p.wait(timeout=WORKER_DEADLINE)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        urls.uninstall()
        urls.close()
        urls.redis.close()
        _drop_prefix(redis_url_or_server, prefix)
    assert [p.returncode for p in procs] == [0] * PROCESSES

    reads: list[Read] = []
    stats: list[dict[str, int]] = []
    for path in logs:
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                stats.append(json.loads(line)["stats"])
                continue
            started, ended, file_id, served, row_key = line.split(" ")
            reads.append(Read(float(started), float(ended), int(file_id), served, row_key))
    assert len(stats) == PROCESSES
    assert all(s["hits"] > 0 for s in stats)
    bad = violations(history, reads, lambda i: object_key(i, 0))
    windows = staleness_windows(history, reads)
    assert max(windows, default=0.0) < 1.0, f"stale for {max(windows):.3f} s"
    assert bad == [], f"{len(bad)} bad reads of {len(reads)}, e.g. {bad[:3]}"


def staleness_windows(history: dict[int, list[Commit]], reads: list[Read]) -> list[float]:
    """For each commit: how long after it returned a read that started later still served
    an older key (0.0 when none did)."""
    out: list[float] = []
    by_file: dict[int, list[Read]] = defaultdict(list)
    for r in reads:
        by_file[r.file_id].append(r)
    for file_id, commits in history.items():
        keys_before: set[str | None] = {object_key(file_id, 0)}
        for n, c in enumerate(commits):
            later = {k.key for k in commits[n:]}
            stale = [
                r.ended - c.returned
                for r in by_file[file_id]
                if r.started > c.returned and r.served in keys_before and r.served not in later
            ]
            out.append(max(stale, default=0.0))
            keys_before.add(c.key)
    return out


def _drop_prefix(url: str, prefix: str) -> None:
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.unlink(*keys)
    except redis.RedisError:
        pass
