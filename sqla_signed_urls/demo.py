"""``sqla-signed-urls demo``: a campus forum's traffic against the cache, measured against its
targets (hit ratio above 80 %, signer calls avoided above 90 %, cached URLs under 100 ms).

It builds a forum database on SQLite (a temporary file) with a few thousand files (users with
avatars, posts with images and attachments), then plays forum traffic: list pages of 20-50 files
picked with Zipf-distributed popularity, each loaded by a query with ``urls.prefetch()`` (one
Redis round trip for the page's URLs, then ``file.url`` reads from the in-process layer), single
``file.url`` reads, and edits, uploads and deletes whose commits invalidate cached URLs. It ends
with a table of hit ratio, signer calls avoided, latency, Redis round trips per page and
invalidations, each against its target::

    sqla-signed-urls demo                      # offline: in-process Redis, LocalSigner
    sqla-signed-urls demo --files 5000 --pages 4000 --seed 3
    sqla-signed-urls demo --redis-url redis://localhost:6379/1   # a real Redis
    python -m sqla_signed_urls.demo

With ``OSS_ACCESS_KEY_ID`` and friends set it signs with ``OSSSigner`` (signing is local
computation: nothing is sent to OSS). On a real Redis it works under a key prefix of its own and
removes its keys when done.

Needs the ``cli`` extra (click and rich), and the ``embedded`` extra (fakeredis) when it runs on
the in-process Redis; without them it raises :class:`~sqla_signed_urls.ConfigurationError` naming
the ``pip install`` command.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import DateTime, ForeignKey, String, and_, create_engine, insert, or_, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from . import signals
from ._extras import require

try:  # the `cli` extra
    import click
    import rich  # noqa: F401 - checked here, its parts are imported where they are used
except ImportError:
    require("click", "cli", "The demo")
    require("rich", "cli", "The demo")
    raise

from .core import SignedURLs
from .exceptions import ConfigurationError
from .signers.base import Signer
from .signers.local import LocalSigner
from .testing import CountingRedis
from .types import ObjectKey

__all__ = ["DemoResult", "demo_command", "run_demo"]

#: The demo's targets: hit ratio, signer calls avoided, cached-URL latency, and one Redis read
#: per list page.
TARGET_HIT_RATIO = 0.80
TARGET_SIGNER_AVOIDED = 0.90
TARGET_LATENCY_MS = 100.0
TARGET_READS_PER_PAGE = 1


class _Base(DeclarativeBase):
    pass


class DemoUser(_Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))


class DemoPost(_Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))


class DemoFile(_Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    file_type: Mapped[str] = mapped_column(String(32))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    post_id: Mapped[int | None] = mapped_column(ForeignKey("posts.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class _CountingSigner(Signer):
    """Counts the calls that reach the real signer."""

    def __init__(self, inner: Signer) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_url_ttl = inner.max_url_ttl
        self.stable = inner.stable
        self.takes_signed_at = inner.takes_signed_at
        self.calls = 0

    def __repr__(self) -> str:
        return repr(self.inner)

    def sign(self, object_key: str, *, expires_at: int, **times: int) -> str:
        self.calls += 1
        return self.inner.sign(object_key, expires_at=expires_at, **times)


@dataclass
class DemoResult:
    """What one run measured."""

    files: int
    pages: int
    single_reads: int = 0
    edits: int = 0
    uploads: int = 0
    deletes: int = 0
    url_reads: int = 0
    signer_calls: int = 0
    hits: int = 0
    misses: int = 0
    stale_urls: int = 0
    invalidations_expected: int = 0
    invalidations_applied: int = 0
    page_round_trips: list[int] = field(default_factory=list)
    page_reads: list[int] = field(default_factory=list)
    late_reads: int = 0
    cached_read_ms: list[float] = field(default_factory=list)
    cached_page_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = ""

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    @property
    def signer_avoided(self) -> float:
        return 1 - self.signer_calls / self.url_reads if self.url_reads else 0.0

    def rows(self) -> list[tuple[str, str, str, str, bool]]:
        """``(metric, target, measured, detail, passed)`` for the final table."""
        read50, read99 = _percentile(self.cached_read_ms, 50), _percentile(self.cached_read_ms, 99)
        page50, page99 = _percentile(self.cached_page_ms, 50), _percentile(self.cached_page_ms, 99)
        trips = self.page_round_trips
        mean_trips = sum(trips) / len(trips) if trips else 0.0
        max_reads = max(self.page_reads, default=0)
        return [
            (
                "Cache hit ratio",
                f"> {TARGET_HIT_RATIO:.0%}",
                f"{self.hit_ratio:.1%}",
                f"{self.hits:,} hits, {self.misses:,} misses",
                self.hit_ratio > TARGET_HIT_RATIO,
            ),
            (
                "Signer calls avoided",
                f"> {TARGET_SIGNER_AVOIDED:.0%}",
                f"{self.signer_avoided:.1%}",
                f"{self.signer_calls:,} signings for {self.url_reads:,} URLs",
                self.signer_avoided > TARGET_SIGNER_AVOIDED,
            ),
            (
                "Cached file.url p50 / p99",
                f"< {TARGET_LATENCY_MS:.0f} ms",
                f"{read50:.3f} / {read99:.3f} ms",
                f"{len(self.cached_read_ms):,} single reads",
                bool(self.cached_read_ms) and read99 < TARGET_LATENCY_MS,
            ),
            (
                "Cached page p50 / p99",
                f"< {TARGET_LATENCY_MS:.0f} ms",
                f"{page50:.3f} / {page99:.3f} ms",
                f"{len(self.cached_page_ms):,} pages of 20-50 URLs (query + reads)",
                bool(self.cached_page_ms) and page99 < TARGET_LATENCY_MS,
            ),
            (
                "Redis round trips per page",
                f"<= {TARGET_READS_PER_PAGE} read",
                f"{mean_trips:.2f} avg",
                f"max {max_reads} read; a miss adds 1 write"
                + (f"; {self.late_reads} read(s) after it" if self.late_reads else ""),
                max_reads <= TARGET_READS_PER_PAGE,
            ),
            (
                "Invalidations applied",
                "every edit/delete",
                f"{self.invalidations_applied:,} / {self.invalidations_expected:,}",
                f"{self.edits:,} edits, {self.deletes:,} deletes",
                self.invalidations_applied == self.invalidations_expected,
            ),
            (
                "Stale URLs served",
                "0",
                f"{self.stale_urls:,}",
                "each URL checked against its row",
                self.stale_urls == 0,
            ),
        ]

    @property
    def passed(self) -> bool:
        return all(ok for *_, ok in self.rows())


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class _Zipf:
    """Draws items with probability proportional to ``1 / rank ** s`` (rank 1 = most popular)."""

    def __init__(self, items: Sequence[int], s: float, rng: random.Random) -> None:
        self.items = list(items)
        rng.shuffle(self.items)
        self.cum_weights = list(itertools.accumulate(1 / (i + 1) ** s for i in range(len(items))))
        self.rng = rng

    def draw(self, k: int = 1) -> list[int]:
        return self.rng.choices(self.items, cum_weights=self.cum_weights, k=k)


def _object_key_matches(url: str, object_key: str) -> bool:
    """True when the signed URL points at ``object_key`` (LocalSigner and OSS URLs alike)."""
    return unquote(urlsplit(url).path).endswith("/" + object_key)


def _make_signer() -> tuple[Signer, str]:
    from .signers.env import signer_from_env, store_in_env

    if store_in_env() is None:
        return LocalSigner(secrets.token_hex(32), base_url="/files"), "LocalSigner (HMAC)"
    signer = signer_from_env()
    return signer, f"{signer!r} (signing is local: nothing is sent to the store)"


def _make_redis(redis_url: str | None) -> tuple[Any, str, bool]:
    """The raw client, a description, and whether it is a real (shared) server."""
    if redis_url is None:
        fakeredis = require("fakeredis", "embedded", "The demo's in-process Redis")
        return fakeredis.FakeRedis(server=fakeredis.FakeServer()), "in-process Redis", False
    from .cache.redis import client_from_url

    client = client_from_url(redis_url, socket_timeout=1.0, setting="--redis-url / REDIS_URL")
    try:
        client.ping()
    except Exception as exc:
        raise click.ClickException(
            f"cannot reach Redis (--redis-url / REDIS_URL): {type(exc).__name__}"
        ) from None
    return client, "Redis server", True


@contextmanager
def _listening() -> Iterator[set[str]]:
    invalidated: set[str] = set()

    def receive(sender: Any, **kwargs: Any) -> None:
        invalidated.update(kwargs.get("keys", ()))

    signals.url_invalidated.connect(receive)
    try:
        yield invalidated
    finally:
        signals.url_invalidated.disconnect(receive)


def _populate(session: Session, files: int, rng: random.Random) -> dict[int, list[int]]:
    """Users (each with an avatar), posts, images and attachments; returns post -> file ids."""
    users = max(5, files // 20)
    posts = max(5, (files - users) // 4)
    now = dt.datetime.now(dt.timezone.utc)
    session.execute(insert(DemoUser), [{"id": i, "name": f"user{i}"} for i in range(1, users + 1)])
    session.execute(
        insert(DemoPost),
        [
            {"id": i, "author_id": rng.randint(1, users), "title": f"Post {i}"}
            for i in range(1, posts + 1)
        ],
    )
    rows: list[dict[str, Any]] = [
        {
            "id": i,
            "object_key": f"avatars/{i}/{rng.getrandbits(40):010x}.png",
            "file_type": "avatar",
            "owner_id": i,
            "post_id": None,
            "created_at": now,
        }
        for i in range(1, users + 1)
    ]
    post_files: dict[int, list[int]] = {p: [] for p in range(1, posts + 1)}
    for file_id in range(users + 1, files + 1):
        post_id = rng.randint(1, posts)
        image = rng.random() < 0.8
        name = f"image-{file_id}.jpg" if image else f"notes {file_id}.pdf"
        rows.append(
            {
                "id": file_id,
                "object_key": f"posts/{post_id}/{name}",
                "file_type": "post_image" if image else "attachment",
                "owner_id": rng.randint(1, users),
                "post_id": post_id,
                "created_at": now,
            }
        )
        post_files[post_id].append(file_id)
    session.execute(insert(DemoFile), rows)
    session.commit()
    return post_files


def run_demo(
    *,
    files: int = 3000,
    pages: int = 2000,
    seed: int = 7,
    zipf: float = 1.1,
    redis_url: str | None = None,
    on_page: Any = None,
) -> DemoResult:
    """Play the workload and return what it measured (the command prints it as a table)."""
    rng = random.Random(seed)
    signer, signer_text = _make_signer()
    counting_signer = _CountingSigner(signer)
    raw, redis_text, shared = _make_redis(redis_url)
    counter = CountingRedis(raw, this_thread_only=True)
    prefix = f"sqla-signed-urls-demo:{secrets.token_hex(4)}:file_url:" if shared else "file_url:"
    urls = SignedURLs(counting_signer, redis=counter, key_prefix=prefix)
    urls.install(_Base)
    result = DemoResult(files=files, pages=pages)
    result.backend = f"SQLite (temporary file), {redis_text}, {signer_text}"
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="sqla-signed-urls-demo-") as tmp:
            engine = create_engine(f"sqlite:///{Path(tmp) / 'forum.db'}")
            try:
                _Base.metadata.create_all(engine)
                factory = sessionmaker(engine, expire_on_commit=False)
                with factory() as session:
                    post_files = _populate(session, files, rng)
                    authors = dict(session.execute(select(DemoPost.id, DemoPost.author_id)).all())
                with _listening() as invalidated:
                    _traffic(
                        urls,
                        factory,
                        counter,
                        raw,
                        post_files,
                        authors,
                        pages,
                        zipf,
                        rng,
                        result,
                        invalidated,
                        on_page,
                    )
            finally:
                engine.dispose()
    finally:
        result.signer_calls = counting_signer.calls
        result.hits, result.misses = urls.stats.hits, urls.stats.misses
        urls.uninstall()
        urls.close()
        if shared:
            for batch in _batches(raw.scan_iter(match=prefix + "*", count=1000), 500):
                raw.unlink(*batch)
        raw.close()
    result.seconds = time.perf_counter() - started
    return result


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def _traffic(
    urls: SignedURLs,
    factory: sessionmaker[Session],
    counter: CountingRedis,
    raw: Any,
    post_files: dict[int, list[int]],
    authors: dict[int, int],
    pages: int,
    zipf: float,
    rng: random.Random,
    result: DemoResult,
    invalidated: set[str],
    on_page: Any,
) -> None:
    popular = _Zipf(list(post_files), zipf, rng)
    perf = time.perf_counter
    for _ in range(pages):
        # -- a list page: 20-50 files from popular posts, with their authors' avatars ---------
        want = rng.randint(20, 50)
        chosen: list[int] = []
        count = 0
        for post_id in popular.draw(want):
            if post_id not in chosen:
                chosen.append(post_id)
                count += len(post_files[post_id]) + 1
            if count >= want:
                break
        with factory() as session:
            misses = urls.stats.misses
            counter.reset()
            t0 = perf()
            # The page's query carries urls.prefetch(): its URLs are read in one round trip
            # right after it loads, and each file.url below is an in-process hit.
            page = session.scalars(
                select(DemoFile)
                .where(
                    or_(
                        DemoFile.post_id.in_(chosen),
                        and_(
                            DemoFile.owner_id.in_({authors[p] for p in chosen}),
                            DemoFile.file_type == "avatar",
                        ),
                    )
                )
                .order_by(DemoFile.id)
                .limit(want)
                .options(urls.prefetch())
            ).all()
            reads = counter.commands["MGET"] + counter.commands["GET"]
            resolved = [file.url for file in page]  # type: ignore[attr-defined]
            elapsed = (perf() - t0) * 1000
            result.page_round_trips.append(counter.round_trips)
            result.page_reads.append(reads)
            # A read after the prefetch: an entry the prefetch had just filled was dropped by
            # the echo of an invalidation this process published for its own earlier edit.
            result.late_reads += counter.commands["MGET"] + counter.commands["GET"] - reads
            if urls.stats.misses == misses:
                result.cached_page_ms.append(elapsed)
            for file, url in zip(page, resolved, strict=True):
                if url is not None:
                    result.url_reads += 1
                    if file.object_key and not _object_key_matches(url, file.object_key):
                        result.stale_urls += 1
        # -- single file views ----------------------------------------------------------------
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            candidates = post_files[popular.draw()[0]]
            if not candidates:
                continue
            with factory() as session:
                one = session.get(DemoFile, rng.choice(candidates))
                if one is None:
                    continue
                hits = urls.stats.hits
                t0 = perf()
                url = one.url  # type: ignore[attr-defined]
                elapsed = (perf() - t0) * 1000
                result.single_reads += 1
                if url is not None:
                    result.url_reads += 1
                    if one.object_key and not _object_key_matches(url, one.object_key):
                        result.stale_urls += 1
                if urls.stats.hits == hits + 1:
                    result.cached_read_ms.append(elapsed)
        # -- writes: edits and deletes invalidate, uploads add files -------------------------
        roll = rng.random()
        if roll < 0.06:
            _edit_or_delete(urls, factory, raw, post_files, popular, rng, result, invalidated)
        elif roll < 0.08:
            _upload(factory, post_files, authors, popular, rng, result)
        if on_page is not None:
            on_page()


def _edit_or_delete(
    urls: SignedURLs,
    factory: sessionmaker[Session],
    raw: Any,
    post_files: dict[int, list[int]],
    popular: _Zipf,
    rng: random.Random,
    result: DemoResult,
    invalidated: set[str],
) -> None:
    post_id = popular.draw()[0]
    candidates = post_files[post_id]
    if not candidates:
        return
    file_id = rng.choice(candidates)
    delete = rng.random() < 0.25
    with factory() as session:
        file = session.get(DemoFile, file_id)
        if file is None:
            return
        key = urls.cache_key(file)
        if delete:
            session.delete(file)
            candidates.remove(file_id)
            result.deletes += 1
        else:
            file.object_key = f"posts/{post_id}/edited-{file_id}-{rng.getrandbits(24):06x}.jpg"
            result.edits += 1
        result.invalidations_expected += 1
        invalidated.clear()
        session.commit()  # the cached URL is dropped after this commit
    if key in invalidated and not raw.exists(key):
        result.invalidations_applied += 1


def _upload(
    factory: sessionmaker[Session],
    post_files: dict[int, list[int]],
    authors: dict[int, int],
    popular: _Zipf,
    rng: random.Random,
    result: DemoResult,
) -> None:
    post_id = popular.draw()[0]
    with factory() as session:
        file = DemoFile(
            object_key=f"posts/{post_id}/upload-{rng.getrandbits(32):08x}.jpg",
            file_type="post_image",
            owner_id=authors[post_id],
            post_id=post_id,
            created_at=dt.datetime.now(dt.timezone.utc),
        )
        session.add(file)
        session.commit()
        post_files[post_id].append(file.id)
    result.uploads += 1


def _print_table(console: Any, result: DemoResult) -> None:
    from rich.table import Table

    table = Table(title="sqla-signed-urls demo: cache results against their targets")
    details = console.width >= 110  # a narrow terminal gets the four essential columns
    table.add_column("Metric", no_wrap=True)
    table.add_column("Target", no_wrap=True)
    table.add_column("Measured", justify="right", no_wrap=True)
    table.add_column("Result", no_wrap=True)
    if details:
        table.add_column("Detail", style="dim")
    for metric, target, measured, detail, passed in result.rows():
        cells = [metric, target, measured, "[green]PASS[/]" if passed else "[red]FAIL[/]"]
        table.add_row(*cells, *([detail] if details else []))
    console.print(table)
    console.print(
        f"{result.files:,} files, {result.pages:,} list pages, {result.single_reads:,} single "
        f"reads, {result.edits:,} edits, {result.uploads:,} uploads, {result.deletes:,} deletes "
        f"in {result.seconds:.1f} s",
        highlight=False,
    )
    console.print(f"on {result.backend}", highlight=False)


@click.command("demo")
@click.option(
    "--files",
    default=3000,
    show_default=True,
    type=click.IntRange(100, 1_000_000),
    help="Files in the forum database.",
)
@click.option(
    "--pages",
    default=2000,
    show_default=True,
    type=click.IntRange(1, 10_000_000),
    help="List pages to view.",
)
@click.option("--seed", default=7, show_default=True, help="Random seed (same seed, same run).")
@click.option(
    "--zipf",
    default=1.1,
    show_default=True,
    type=click.FloatRange(0.0, 5.0),
    help="Popularity skew: 0 is uniform, larger is more skewed.",
)
@click.option(
    "--redis-url",
    default=None,
    help="Use this Redis instead of an in-process one (default: REDIS_URL when set).",
)
def demo_command(files: int, pages: int, seed: int, zipf: float, redis_url: str | None) -> None:
    """Play campus-forum traffic against the URL cache and report it against the targets."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(width=None if sys.stdout.isatty() else 120)
    redis_url = redis_url or os.environ.get("REDIS_URL") or None
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    try:
        with progress:
            task = progress.add_task("forum traffic", total=pages)
            result = run_demo(
                files=files,
                pages=pages,
                seed=seed,
                zipf=zipf,
                redis_url=redis_url,
                on_page=lambda: progress.advance(task),
            )
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    _print_table(console, result)


if __name__ == "__main__":
    demo_command(prog_name="python -m sqla_signed_urls.demo")
