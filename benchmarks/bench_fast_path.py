"""Fast-path benchmark: sqla_signed_urls next to its baselines, in one run.

Baselines, measured in the same run and interleaved with the candidates: direct oss2 V1 and V4
signing (offline), a plain Flask-Caching ``RedisCache`` get/set per file, raw
redis-py ``GET``, ``MGET`` of 100 keys and a pipelined ``SET`` of 100 keys. Every case is sampled
once per round, rounds run the cases in a fresh random order, and the table shows medians.

    .venv/bin/python benchmarks/bench_fast_path.py                # needs Redis on 127.0.0.1:6379
    .venv/bin/python benchmarks/bench_fast_path.py --redis-url redis://127.0.0.1:6379/13

Every row uses redis-py's default reply parser (hiredis with the ``fast`` extra), except one
``resolve()`` row measured through the pure-Python parser beside it.

Round-trip ratios only mean something on a real Redis server, so there is no fakeredis mode.
Exit status: 0 when every target passes, 1 when one fails, 2 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

import oss2
import redis
from _harness import (
    ENDPOINT,
    PAGE,
    PARSER,
    URL_TTL,
    Case,
    Table,
    floor_checks,
    make_model,
    perf_ns,
    run_rounds,
)
from redis._parsers import _RESP2Parser
from redis.utils import HIREDIS_AVAILABLE
from sqlalchemy import create_engine, insert, select
from sqlalchemy.orm import Session

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.cache.base import signer_tag
from sqla_signed_urls.signers import OSSSigner

CACHE_TTL = 2700
MEMORY_ENTRIES = 10_000


# -- models: two bases on one table, so one SignedURLs can run with L1 and one without ----------


# -- the baseline: a plain Flask-Caching RedisCache, get/set per file ---------------------------


class EmulatedSeedCache:
    """What Flask-Caching's ``RedisCache`` does on get/set (cachelib): pickle with a ``!``
    marker, ``SETEX`` with the timeout. Used only when flask-caching is not installed."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def get(self, key: str) -> Any:
        value: Any = self.client.get(self.prefix + key)
        if value is None:
            return None
        if value.startswith(b"!"):
            return pickle.loads(value[1:])  # noqa: S301 - Flask-Caching's own format, our own data
        return int(value)

    def set(self, key: str, value: Any, timeout: int) -> bool:
        dumped = b"!" + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        return bool(self.client.setex(self.prefix + key, timeout, dumped))


def make_plain_cache(url: str, prefix: str) -> tuple[Any, str]:
    try:
        from flask import Flask
        from flask_caching import Cache
    except ImportError:
        return EmulatedSeedCache(url, prefix), "emulated Flask-Caching RedisCache (not installed)"
    app = Flask("baseline")
    cache = Cache(
        app,
        config={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": url,
            "CACHE_DEFAULT_TIMEOUT": CACHE_TTL,
            "CACHE_KEY_PREFIX": prefix,
        },
    )
    app.app_context().push()  # a Flask app reads its cache inside a request
    return cache, "Flask-Caching RedisCache"


# -- measuring ----------------------------------------------------------------------------------


def wait_live(urls: SignedURLs, obj: Any) -> None:
    """The L1 is read and filled only once the invalidation listener has subscribed."""
    _ = obj.url
    deadline = time.monotonic() + 10
    while not urls.channel.live:
        if time.monotonic() > deadline:
            sys.exit("the invalidation listener did not subscribe within 10 s")
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--rounds", type=int, default=1000, help="samples per case (default 1000)")
    args = parser.parse_args()

    raw = redis.Redis.from_url(args.redis_url)
    try:
        raw.ping()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {args.redis_url}: {exc}", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench{run_id}:file_url:"
    plain_prefix = f"bench{run_id}:plain:"
    raw_prefix = f"bench{run_id}:raw:"

    bucket_v1 = oss2.Bucket(oss2.Auth("id", "secret"), ENDPOINT, "bench")
    bucket_v4 = oss2.Bucket(oss2.AuthV4("id", "secret"), ENDPOINT, "bench", region="cn-hangzhou")

    # 10,000 real rows in SQLite, loaded as ORM instances twice (one mapping per SignedURLs).
    base_l1, file_l1 = make_model("L1")
    base_l2, file_l2 = make_model("Redis")
    engine = create_engine("sqlite://")
    base_l1.metadata.create_all(engine)
    keys = [f"uploads/2024/05/{uuid.uuid4().hex}.jpg" for _ in range(MEMORY_ENTRIES)]
    with Session(engine) as s:
        s.execute(insert(file_l1), [{"id": i + 1, "object_key": k} for i, k in enumerate(keys)])
        s.commit()
    urls = SignedURLs(OSSSigner(bucket_v1), redis=args.redis_url, key_prefix=prefix)
    urls.install(base_l1)
    urls_off = SignedURLs(
        OSSSigner(bucket_v1), redis=args.redis_url, key_prefix=prefix, local_cache_size=0
    )
    urls_off.install(base_l2)
    # The same cache through redis-py's pure-Python reply parser, beside the default one
    # (hiredis, when the `fast` extra is installed).
    base_py, file_py = make_model("PyParser")
    pure_client = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(args.redis_url, parser_class=_RESP2Parser)
    )
    urls_py = SignedURLs(OSSSigner(bucket_v1), redis=pure_client, key_prefix=prefix)
    urls_py.install(base_py)
    session_l1 = Session(engine)
    session_l2 = Session(engine)
    session_py = Session(engine)
    rows = list(session_l1.scalars(select(file_l1).order_by(file_l1.id)))
    rows_off = list(session_l2.scalars(select(file_l2).order_by(file_l2.id)))
    page_py = list(session_py.scalars(select(file_py).order_by(file_py.id).limit(PAGE)))
    page = rows[:PAGE]
    page_keys = [f"{prefix}{f.id}" for f in page]
    one, one_off = rows[0], rows_off[0]

    plain, plain_kind = make_plain_cache(args.redis_url, plain_prefix)

    def plain_url(f: Any) -> Any:
        """A ``File.url`` property over Flask-Caching, as a Flask app writes it by hand."""
        cache_key = f"file_url:{f.id}"
        cached = plain.get(cache_key)
        if cached:
            return cached
        signed = bucket_v1.sign_url("GET", f.object_key, URL_TTL)
        plain.set(cache_key, signed, timeout=CACHE_TTL)
        return signed

    # Warm everything the warm cases read.
    wait_live(urls, one)
    wait_live(urls_py, page_py[0])
    urls.resolve(page)
    for f in page:
        plain_url(f)
    # The raw GET/MGET baselines read exactly the bytes the library stores for the page.
    raw_keys = [f"{raw_prefix}{i}" for i in range(PAGE)]
    pipe_keys = [f"{raw_prefix}pipe:{i}" for i in range(PAGE)]  # the sign+SET baseline's own
    stored: list[Any] = raw.mget(page_keys)
    raw.mset(dict(zip(raw_keys, stored, strict=True)))
    assert one.url == one_off.url == urls.resolve([one])[0]

    # -- cases --------------------------------------------------------------------------------

    def v1_sign(n: int) -> int:
        sign, key = bucket_v1.sign_url, one.object_key
        t0 = perf_ns()
        for _ in range(n):
            sign("GET", key, URL_TTL)
        return perf_ns() - t0

    def v4_sign(n: int) -> int:
        sign, key = bucket_v4.sign_url, one.object_key
        t0 = perf_ns()
        for _ in range(n):
            sign("GET", key, URL_TTL)
        return perf_ns() - t0

    def raw_get(n: int) -> int:
        get, key = raw.get, raw_keys[0]
        t0 = perf_ns()
        for _ in range(n):
            get(key)
        return perf_ns() - t0

    def raw_mget(n: int) -> int:
        mget = raw.mget
        t0 = perf_ns()
        for _ in range(n):
            mget(raw_keys)
        return perf_ns() - t0

    tag, min_validity = f" {signer_tag(urls.signer.name)} ", urls.settings.min_validity
    key_prefix, url_prefixes, get_many = prefix, urls.signer.url_prefixes, urls.store.get_many
    assert urls.local is not None
    l1 = urls.local._data

    def floor(n: int) -> int:
        """What any L1-cold resolve() must do, inlined: read each row's object key and id,
        build its cache key, one MGET through the library's own client, the checks a value
        must pass before its URL may be served (signer tag, object key, both lifetimes, URL
        prefix, prefixes quoted a page at once), and one bulk fill of the L1. Nothing else:
        no missing attributes, composite keys, mixed classes, duplicates, counters or signals."""
        total = 0
        for _ in range(n):
            urls.clear_local()
            t0 = perf_ns()
            keys, object_keys = [], []
            for f in page:
                d = f.__dict__
                object_keys.append(d["object_key"])
                keys.append(key_prefix + str(d["id"]))
            values = get_many(keys)
            served = floor_checks(
                keys, values, object_keys, url_prefixes(object_keys), tag, min_validity
            )
            l1.update(served)
            total += perf_ns() - t0
            assert len(served) == PAGE
        return total

    def plain_get(n: int) -> int:
        t0 = perf_ns()
        for _ in range(n):
            plain_url(one)
        return perf_ns() - t0

    def plain_page(n: int) -> int:
        t0 = perf_ns()
        for _ in range(n):
            for f in page:
                plain_url(f)
        return perf_ns() - t0

    def l1_hit(n: int) -> int:
        f = one
        t0 = perf_ns()
        for _ in range(n):
            _ = f.url
        return perf_ns() - t0

    def redis_hit(n: int) -> int:
        f = one_off
        t0 = perf_ns()
        for _ in range(n):
            _ = f.url
        return perf_ns() - t0

    def resolve_l1_cold(u: SignedURLs, objects: list[Any]) -> Callable[[int], int]:
        """``resolve()`` of ``objects`` with ``u``'s L1 emptied before each (not timed)."""

        def run(n: int) -> int:
            total = 0
            for _ in range(n):
                u.clear_local()
                t0 = perf_ns()
                u.resolve(objects)
                total += perf_ns() - t0
            return total

        return run

    def resolve_l1_warm(n: int) -> int:
        resolve = urls.resolve
        resolve(page)
        t0 = perf_ns()
        for _ in range(n):
            resolve(page)
        return perf_ns() - t0

    def resolve_cold(n: int) -> int:
        total = 0
        for _ in range(n):
            raw.unlink(*page_keys)
            urls.clear_local()
            t0 = perf_ns()
            urls.resolve(page)
            total += perf_ns() - t0
        return total

    def sign_and_pipeline(n: int) -> int:
        sign = bucket_v1.sign_url
        total = 0
        for _ in range(n):
            raw.unlink(*pipe_keys)
            t0 = perf_ns()
            signed = [sign("GET", f.object_key, URL_TTL) for f in page]
            pipe = raw.pipeline(transaction=False)
            for key, url in zip(pipe_keys, signed, strict=True):
                pipe.set(key, url, ex=CACHE_TTL)
            pipe.execute()
            total += perf_ns() - t0
        return total

    cases = {
        c.name: c
        for c in [
            Case("v1", v1_sign, 40),
            Case("v4", v4_sign, 15),
            Case("get", raw_get, 15),
            Case("mget", raw_mget, 8),
            Case("floor", floor, 5),
            Case("plain_get", plain_get, 15),
            Case("plain_page", plain_page, 1),
            Case("l1_hit", l1_hit, 400),
            Case("redis_hit", redis_hit, 15),
            Case("resolve_l1_cold", resolve_l1_cold(urls, page), 5),
            Case("resolve_l1_cold_py", resolve_l1_cold(urls_py, page_py), 5),
            Case("resolve_l1_warm", resolve_l1_warm, 20),
            Case("resolve_cold", resolve_cold, 1),
            Case("sign_pipe", sign_and_pipeline, 1),
        ]
    }
    # The 20,000 ORM objects stay out of the cyclic collector's way while timing.
    m, timing_s = run_rounds(cases.values(), args.rounds)

    # -- L1 memory at 10,000 entries ----------------------------------------------------------
    urls.resolve(rows)  # Redis warm for all 10,000
    urls.clear_local()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(0, len(rows), 1000):
        urls.resolve(rows[i : i + 1000])
    gc.collect()
    filled = tracemalloc.get_traced_memory()[0]
    entries = len(urls.local) if urls.local is not None else 0
    urls.clear_local()
    gc.collect()
    emptied = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    l1_bytes = filled - emptied
    retained_bytes = filled - before

    # -- table --------------------------------------------------------------------------------
    sign_pipe = m["sign_pipe"]
    table = Table()
    row, check = table.row, table.check

    row("baseline: oss2 V1 sign_url", f"{m['v1']:.2f} us")
    row("baseline: oss2 V4 sign_url", f"{m['v4']:.2f} us", f"{m['v4'] / m['v1']:.1f}x V1")
    row("baseline: redis-py GET (1 key)", f"{m['get']:.1f} us")
    row("baseline: redis-py MGET (100 keys)", f"{m['mget']:.1f} us")
    row(
        "floor: the least an L1-cold resolve() must do",
        f"{m['floor']:.0f} us",
        f"{m['floor'] / m['mget']:.3f}x MGET",
    )
    row("baseline: 100 V1 signs + pipelined SET x100", f"{sign_pipe:.0f} us")
    row(f"baseline: Flask-Caching get, 1 file [{plain_kind}]", f"{m['plain_get']:.1f} us")
    row("baseline: Flask-Caching get, 100 files (per-row get)", f"{m['plain_page']:.0f} us")
    speed = m["v1"] / m["l1_hit"]
    row(
        "file.url, L1 hit",
        f"{m['l1_hit']:.2f} us",
        f"{speed:.1f}x faster than V1",
        ">= 20x",
        check(speed >= 20),
    )
    ratio = m["redis_hit"] / m["get"]
    row(
        "file.url, L1 off, Redis hit",
        f"{m['redis_hit']:.1f} us",
        f"{ratio:.3f}x GET",
        "<= 1.2x",
        check(ratio <= 1.2),
    )
    ratio = m["resolve_l1_cold"] / m["mget"]
    row(
        "resolve() 100 rows, L1 cold, Redis warm",
        f"{m['resolve_l1_cold']:.0f} us",
        f"{ratio:.3f}x MGET",
        "<= 1.5x",
        check(ratio <= 1.5),
    )
    ratio = m["resolve_l1_cold"] / m["floor"]
    row(
        "  the same, against the floor row",
        "",
        f"{ratio:.3f}x floor",
        "<= 1.15x",
        check(ratio <= 1.15),
    )
    row(
        "resolve() 100 rows, L1 cold, pure-Python parser",
        f"{m['resolve_l1_cold_py']:.0f} us",
    )
    lower = 1 - m["resolve_l1_cold"] / m["resolve_l1_cold_py"]
    row(
        f"  the same with the default parser [{PARSER}]",
        f"{m['resolve_l1_cold']:.0f} us",
        f"{lower:.0%} lower",
        ">= 25% lower",
        check(lower >= 0.25) if HIREDIS_AVAILABLE else "needs hiredis (the fast extra)",
    )
    speed = m["plain_page"] / m["resolve_l1_warm"]
    row(
        "resolve() 100 rows, L1 warm",
        f"{m['resolve_l1_warm']:.1f} us",
        f"{speed:.0f}x faster than Flask-Caching",
        ">= 50x",
        check(speed >= 50),
    )
    ratio = m["resolve_cold"] / sign_pipe
    row(
        "resolve() 100 rows, all cold",
        f"{m['resolve_cold']:.0f} us",
        f"{ratio:.3f}x signs+SETs",
        "<= 1.3x",
        check(ratio <= 1.3),
    )
    row(
        f"L1 memory at {entries:,} entries (tracemalloc)",
        f"{l1_bytes / 1e6:.2f} MB",
        f"{l1_bytes / max(entries, 1):.0f} B/entry",
        "<= 5 MB",
        check(l1_bytes <= 5e6 and entries == MEMORY_ENTRIES),
    )

    print(
        f"sqla_signed_urls fast path: {args.rounds} interleaved rounds in {timing_s:.0f} s, "
        f"Redis {raw.info('server')['redis_version']} at {args.redis_url}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; redis-py reply parser: {PARSER} "
        "(every row but the pure-Python one)"
    )
    print(
        f"L1 retained after filling {entries:,} entries: {retained_bytes / 1e6:.2f} MB; "
        "freed by clear_local(): the L1 row below"
    )
    table.print()

    # -- clean up -----------------------------------------------------------------------------
    urls.uninstall()
    urls.close()
    urls_off.uninstall()
    urls_off.close()
    urls_py.uninstall()
    urls_py.close()
    pure_client.close()
    session_l1.close()
    session_l2.close()
    session_py.close()
    for pattern in (prefix, plain_prefix, raw_prefix):
        found = list(raw.scan_iter(match=pattern + "*", count=1000))
        for i in range(0, len(found), 1000):
            raw.unlink(*found[i : i + 1000])
    return 0 if table.passed else 1


if __name__ == "__main__":
    sys.exit(main())
