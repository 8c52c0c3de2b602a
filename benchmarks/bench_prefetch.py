"""Prefetch benchmark: a list page read through ``urls.prefetch()``, through an explicit
``resolve()``, and through plain attribute reads, side by side in one run.

The page: 50 posts, each with its author's avatar and 0-3 images, loaded from SQLite with
``selectinload`` (posts, authors, avatars, images) and every URL on it read. Each sample starts
with the in-process layer empty (L1 cold) and Redis holding every URL (Redis warm):

- ``prefetch()``: the query carries the option; then every ``.url`` is read;
- ``resolve()``: the same query without it, one ``urls.resolve()`` of the same objects, then
  every ``.url``;
- attributes only: the same query, then every ``.url`` (one ``GET`` each).

It also times a plain ``select(Author.id)`` with the option installed for every statement
(``install(..., prefetch=True)``) against the same statement without it, which must cost nothing
measurable. Every case is sampled once per round, rounds run the cases in a fresh random order,
and the table shows medians.

    .venv/bin/python benchmarks/bench_prefetch.py               # needs Redis on 127.0.0.1:6379
    .venv/bin/python benchmarks/bench_prefetch.py --redis-url redis://127.0.0.1:6379/13

Exit status: 0 when every target passes, 1 when one fails, 2 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from typing import Any

import redis
from _harness import Case, Table, perf_ns, run_rounds
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from sqla_signed_urls import ObjectKey, SignedURLs
from sqla_signed_urls.signers import LocalSigner
from sqla_signed_urls.testing import CountingRedis

POSTS = 50
AUTHORS = 20


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    avatar: Mapped[Avatar | None] = relationship(uselist=False)


class Avatar(Base):
    __tablename__ = "avatars"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    object_key: Mapped[str | None] = mapped_column(ObjectKey(200, namespace="avatar"))


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship()
    images: Mapped[list[Image]] = relationship()


class Image(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"))
    object_key: Mapped[str | None] = mapped_column(ObjectKey(200))


def page_statement() -> Any:
    return (
        select(Post)
        .options(selectinload(Post.author).selectinload(Author.avatar), selectinload(Post.images))
        .order_by(Post.id)
    )


def page_files(posts: list[Post]) -> list[Any]:
    files: list[Any] = []
    for post in posts:
        if post.author.avatar is not None:
            files.append(post.author.avatar)
        files.extend(post.images)
    return files


def read_urls(posts: list[Post]) -> int:
    count = 0
    for post in posts:
        avatar = post.author.avatar
        if avatar is not None and avatar.url:
            count += 1
        for image in post.images:
            if image.url:
                count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--rounds", type=int, default=300, help="samples per case (default 300)")
    args = parser.parse_args()
    raw = redis.Redis.from_url(args.redis_url)
    try:
        raw.ping()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {args.redis_url}: {exc}", file=sys.stderr)
        return 2
    prefix = f"bench{uuid.uuid4().hex[:8]}:file_url:"
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        for a in range(1, AUTHORS + 1):
            session.add(Author(id=a, name=f"author {a}"))
            session.add(Avatar(author_id=a, object_key=f"avatars/{a}/{uuid.uuid4().hex}.png"))
        for p in range(1, POSTS + 1):
            session.add(Post(id=p, author_id=(p % AUTHORS) + 1))
            for i in range(p % 4):
                session.add(Image(post_id=p, object_key=f"posts/{p}/{i}-{uuid.uuid4().hex}.jpg"))
        session.commit()

    counting = CountingRedis(redis.Redis.from_url(args.redis_url))
    urls = SignedURLs(
        LocalSigner("bench-secret" * 3, base_url="/files"), redis=counting, key_prefix=prefix
    )
    urls.install(Base)
    installation = urls._installation  # the bench switches the global option on and off
    with Session(engine) as session:
        posts = list(session.scalars(page_statement()))
        files = page_files(posts)
        urls.resolve(files)  # Redis warm
        urls.channel.ensure_started()
    while not urls.channel.live:
        perf_ns()

    # -- the one round trip, counted before timing ---------------------------------------------
    urls.clear_local()
    counting.reset()
    with Session(engine) as session:
        posts = list(session.scalars(page_statement().options(urls.prefetch())))
        read = read_urls(posts)
    prefetch_commands = dict(counting.commands)
    urls.clear_local()
    counting.reset()
    with Session(engine) as session:
        read_urls(list(session.scalars(page_statement())))
    attribute_gets = counting.commands["GET"]

    def prefetch_page(n: int) -> int:
        total = 0
        for _ in range(n):
            urls.clear_local()
            t0 = perf_ns()
            with Session(engine) as session:
                read_urls(list(session.scalars(page_statement().options(urls.prefetch()))))
            total += perf_ns() - t0
        return total

    def resolve_page(n: int) -> int:
        total = 0
        for _ in range(n):
            urls.clear_local()
            t0 = perf_ns()
            with Session(engine) as session:
                posts = list(session.scalars(page_statement()))
                urls.resolve(page_files(posts))
                read_urls(posts)
            total += perf_ns() - t0
        return total

    def attribute_page(n: int) -> int:
        total = 0
        for _ in range(n):
            urls.clear_local()
            t0 = perf_ns()
            with Session(engine) as session:
                read_urls(list(session.scalars(page_statement())))
            total += perf_ns() - t0
        return total

    ids = select(Author.id)
    option = urls.prefetch()

    def plain_select(on: bool) -> Any:
        def run(n: int) -> int:
            installation.prefetch_all = option if on else None
            try:
                with Session(engine) as session:
                    t0 = perf_ns()
                    for _ in range(n):
                        session.execute(ids).all()
                    return perf_ns() - t0
            finally:
                installation.prefetch_all = None

        return run

    m, seconds = run_rounds(
        [
            Case("prefetch", prefetch_page, 2),
            Case("resolve", resolve_page, 2),
            Case("attributes", attribute_page, 1),
            Case("select_on", plain_select(True), 50),
            Case("select_off", plain_select(False), 50),
        ],
        args.rounds,
    )

    table = Table()
    mgets = prefetch_commands.get("MGET", 0)
    table.row(
        f"page of {POSTS} posts, {read} URLs: explicit resolve(), L1 cold, Redis warm",
        f"{m['resolve']:.0f} us",
    )
    ratio = m["prefetch"] / m["resolve"]
    table.row(
        "the same page through prefetch()",
        f"{m['prefetch']:.0f} us",
        f"{ratio:.3f}x resolve(), {mgets} MGET",
        "<= 1.2x, 1 MGET",
        table.check(ratio <= 1.2 and prefetch_commands == {"MGET": 1}),
    )
    table.row(
        "the same page, attribute reads only",
        f"{m['attributes']:.0f} us",
        f"{m['attributes'] / m['prefetch']:.1f}x prefetch(), {attribute_gets} GETs",
    )
    table.row("select(Author.id), no global option", f"{m['select_off']:.1f} us")
    ratio = m["select_on"] / m["select_off"]
    table.row(
        "select(Author.id), install(prefetch=True)",
        f"{m['select_on']:.1f} us",
        f"{ratio:.3f}x without",
        "<= 1.05x",
        table.check(ratio <= 1.05),
    )
    print(
        f"sqla_signed_urls prefetch: {args.rounds} interleaved rounds in {seconds:.0f} s, "
        f"Redis {raw.info('server')['redis_version']} at {args.redis_url}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    table.print()

    urls.uninstall()
    urls.close()
    found = list(raw.scan_iter(match=prefix + "*", count=1000))
    if found:
        raw.unlink(*found)
    raw.close()
    return 0 if table.passed else 1


if __name__ == "__main__":
    sys.exit(main())
