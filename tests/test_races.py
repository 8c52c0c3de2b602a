"""Issue 6, races: many readers against concurrent commits, in threads and in processes.

The property checked everywhere: a read made by a session that started after a commit
returned never serves a URL for another object key than the committed one, and no read ever
raises. Every commit is recorded with the time it began and the time ``commit()`` returned;
every read with the time its session started and the time it got its URL. The object key is
taken back out of the served URL (FakeSigner URLs carry it in their path).

Counts: the issue's full numbers (16 threads, 1,000 files, 50,000 reads) run when
``REDIS_URL`` or ``DATABASE_URL`` is set (CI); the default run on SQLite + fakeredis uses a
smaller workload so the suite stays fast. The 4-process variant needs a real Redis: the one
in ``REDIS_URL``, or a throwaway ``redis-server`` started here.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import fakeredis
import pytest
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.testing import FakeSigner
from sqla_signed_urls.types import ObjectKey

from .servers import RedisServer, require_redis_server

REDIS_URL = os.environ.get("REDIS_URL") or None
DATABASE_URL = os.environ.get("DATABASE_URL") or None
FULL = bool(REDIS_URL or DATABASE_URL)
ROOT = Path(__file__).resolve().parent.parent

THREADS = 16
FILES = 1000 if FULL else 100
READS = 50_000 if FULL else 8_000
PROCESSES = 4
#: Stop waiting for worker processes after this long (they normally finish in seconds).
WORKER_DEADLINE = 120.0


class RaceBase(DeclarativeBase):
    pass


class RaceFile(RaceBase):
    __tablename__ = "race_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


def key_of(url: str | None) -> str:
    assert url is not None
    parts = urlsplit(url)
    assert parts.netloc == "files.test" and parts.query.endswith("&sig=fake")
    return unquote(parts.path[1:])


def object_key(file_id: int, version: int) -> str:
    return f"files/{file_id}/v{version}.png"


# -- databases --------------------------------------------------------------------------------


def make_engine(url: str, schema: str | None, pool_size: int) -> Engine:
    """An engine for the threads/processes of a race: SQLite file (WAL) or PostgreSQL."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _fast_commits(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.execute("PRAGMA synchronous=OFF")  # a throwaway file: no fsync needed

        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size)
    if schema:

        @event.listens_for(engine, "connect")
        def _search_path(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f'SET search_path TO "{schema}"')
            cur.close()
            dbapi_conn.commit()

    return engine


@dataclass
class Database:
    url: str
    schema: str | None
    engine: Engine


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """PostgreSQL in a schema of its own when DATABASE_URL is set, else a SQLite file in WAL."""
    if DATABASE_URL:
        schema = f"race_{uuid.uuid4().hex[:8]}"
        admin = create_engine(DATABASE_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = make_engine(DATABASE_URL, schema, THREADS + 4)
        RaceBase.metadata.create_all(engine)
        yield Database(DATABASE_URL, schema, engine)
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        return
    url = f"sqlite:///{tmp_path / 'race.db'}"
    setup = create_engine(url)
    with setup.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    setup.dispose()
    engine = make_engine(url, None, THREADS + 4)
    RaceBase.metadata.create_all(engine)
    yield Database(url, None, engine)
    engine.dispose()


def seed(factory: sessionmaker[Session], ids: range) -> None:
    with factory() as session:
        session.add_all(RaceFile(id=i, object_key=object_key(i, 0)) for i in ids)
        session.commit()


# -- the history of commits and the check -----------------------------------------------------


@dataclass(frozen=True)
class Commit:
    begin: float
    returned: float
    key: str | None  # None: the row was deleted


@dataclass(frozen=True)
class Read:
    started: float  # before the session was created
    ended: float  # after the URL was returned
    file_id: int
    served: str  # object key in the served URL
    row_key: str  # object key of the row the session loaded


def violations(
    history: dict[int, list[Commit]], reads: list[Read], initial: Callable[[int], str | None]
) -> list[str]:
    """Reads that served anything but the row's committed key at the time they ran.

    A read may see the state of the last commit that returned before its session started, or
    of any commit that was in flight while it ran; never an older one.
    """
    out: list[str] = []
    for r in reads:
        if r.served != r.row_key:
            out.append(f"{r}: URL for {r.served!r}, row has {r.row_key!r}")
            continue
        commits = history.get(r.file_id, [])
        allowed: set[str | None] = set()
        last: str | None = initial(r.file_id)
        for c in commits:
            if c.returned < r.started:
                last = c.key
            elif c.begin < r.ended:
                allowed.add(c.key)
        allowed.add(last)
        if r.served not in allowed:
            out.append(f"{r}: served {r.served!r}, committed before it started: {last!r}")
    return out


# -- 16 threads -------------------------------------------------------------------------------


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
    seed(factory, range(1, FILES + 1))
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


# -- the slow reader --------------------------------------------------------------------------


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
    seed(factory, range(1, 3))
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
    seed(factory, range(1, 3))
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


# -- 4 processes ------------------------------------------------------------------------------


def _worker_main() -> None:
    """Entry point of one worker process (``python -c``): read hot rows until told to stop.

    Writes one line per read: ``started ended file_id served_key row_key`` (monotonic clock,
    which Linux shares between processes), then a JSON line with its counters.
    """
    args = json.loads(sys.argv[1])
    engine = make_engine(args["db_url"], args["schema"], 2)
    factory = sessionmaker(engine, expire_on_commit=False)
    urls = SignedURLs(
        FakeSigner(), redis=args["redis_url"], key_prefix=args["prefix"], local_cache_size=10_000
    )
    urls.install(RaceBase)
    stop = Path(args["stop"])
    hot: list[int] = args["ids"]
    deadline = time.monotonic() + args["max_seconds"]
    with open(args["log"], "w", buffering=1 << 16) as log:
        ready = False
        while time.monotonic() < deadline and not stop.exists():
            for file_id in hot:
                started = time.monotonic()
                with factory() as session:
                    file = session.get(RaceFile, file_id)
                    url = file.url if file is not None else None
                    ended = time.monotonic()
                    if file is not None and file.object_key:
                        log.write(
                            f"{started!r} {ended!r} {file_id} {key_of(url)} {file.object_key}\n"
                        )
            if not ready:
                Path(args["ready"]).touch()
                ready = True
        log.write(json.dumps({"stats": urls.stats.as_dict()}) + "\n")
    urls.uninstall()
    urls.close()
    urls.redis.close()
    engine.dispose()


@pytest.fixture
def real_redis_url(tmp_path: Path) -> Iterator[str]:
    """REDIS_URL, or a throwaway redis-server started for this test."""
    if REDIS_URL:
        yield REDIS_URL
        return
    require_redis_server()
    with RedisServer(tmp_path / "redis") as server:
        yield server.url()


def test_four_processes_stop_serving_the_old_url_within_a_second(
    database: Database, real_redis_url: str, tmp_path: Path
) -> None:
    factory = sessionmaker(database.engine, expire_on_commit=False)
    hot = list(range(1, 21))
    seed(factory, range(1, 21))
    prefix = f"race4p{uuid.uuid4().hex[:8]}:file_url:"
    stop = tmp_path / "stop"
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"worker{n}.log" for n in range(PROCESSES)]
    readies = [tmp_path / f"worker{n}.ready" for n in range(PROCESSES)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    history: dict[int, list[Commit]] = defaultdict(list)
    urls = SignedURLs(FakeSigner(), redis=real_redis_url, key_prefix=prefix)
    urls.install(RaceBase)
    try:
        for n in range(PROCESSES):
            args = {
                "db_url": database.url,
                "schema": database.schema,
                "redis_url": real_redis_url,
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
                        "from tests.test_races import _worker_main; _worker_main()",
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
        _drop_prefix(real_redis_url, prefix)
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
