"""Races between readers and concurrent commits: the model, the databases (a SQLite file in
WAL, or PostgreSQL in a schema of its own), the record of commits and reads, the check, and
the worker process. Used by ``tests/orm/test_races.py`` (threads) and
``tests/servers/test_cross_process.py`` (processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.testing import FakeSigner
from sqla_signed_urls.types import ObjectKey

DATABASE_URL = os.environ.get("DATABASE_URL") or None
THREADS = 16


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


# -- databases ---------------------------------------------------------------------------------


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


@contextlib.contextmanager
def open_database(tmp_path: Path) -> Iterator[Database]:
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


def insert_rows(factory: sessionmaker[Session], ids: range) -> None:
    with factory() as session:
        session.add_all(RaceFile(id=i, object_key=object_key(i, 0)) for i in ids)
        session.commit()


# -- the history of commits and the check ------------------------------------------------------


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


# -- the worker process ------------------------------------------------------------------------


def worker_main() -> None:
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
