"""Async benchmark: ``aresolve()``, ``await obj.awaitable_attrs.url`` and a plain ``obj.url`` in
a coroutine next to raw ``redis.asyncio`` calls and direct oss2 signing, in one run.

Baselines are measured in the same event loop and interleaved with the candidates: one raw
``MGET`` of 100 keys and one raw ``GET`` on a ``redis.asyncio`` client built the way the library
builds its own (``async_client_from_url``: RESP2, same timeouts), 100 awaited raw ``GET``s, and
direct oss2 V1 signing (offline). Every case is sampled once per round, rounds run the cases in
a fresh random order, and the table shows medians.

    .venv/bin/python benchmarks/bench_async.py                # needs Redis on 127.0.0.1:6379
    .venv/bin/python benchmarks/bench_async.py --redis-url redis://127.0.0.1:6379/13 --rounds 300

It writes only keys under a random ``bench<run>:`` prefix and removes them at the end.
Exit status: 0 when every target passes, 1 when one fails, 2 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import oss2
import redis
import redis.asyncio
from _harness import ENDPOINT, PAGE, PARSER, URL_TTL, Table, floor_checks, make_model, perf_ns
from redis._parsers import _AsyncRESP2Parser
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncAttrs, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_only, greenlet_spawn

from sqla_signed_urls import SignedURLs
from sqla_signed_urls.cache.aredis import async_client_from_url
from sqla_signed_urls.cache.base import signer_tag
from sqla_signed_urls.signers import OSSSigner

ROWS = 2000


def pure_parser_client(url: str, socket_timeout: float) -> Any:
    """A ``redis.asyncio`` client on redis-py's pure-Python reply parser."""
    pool = redis.asyncio.ConnectionPool.from_url(
        url, parser_class=_AsyncRESP2Parser, socket_timeout=socket_timeout
    )
    return redis.asyncio.Redis(connection_pool=pool)


class Case:
    """``await run(n)`` returns the nanoseconds that n repetitions of the timed part took."""

    def __init__(self, name: str, run: Callable[[int], Awaitable[int]], n: int) -> None:
        self.name = name
        self.run = run
        self.n = n
        self.samples: list[float] = []

    async def sample(self) -> None:
        self.samples.append(await self.run(self.n) / self.n)

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples) / 1000.0


async def bench(args: argparse.Namespace) -> int:
    sync_raw = redis.Redis.from_url(args.redis_url)
    try:
        sync_raw.ping()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {args.redis_url}: {exc}", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench{run_id}:file_url:"
    raw_prefix = f"bench{run_id}:raw:"
    bucket = oss2.Bucket(oss2.Auth("id", "secret"), ENDPOINT, "bench")

    base_l1, file_l1 = make_model("L1", AsyncAttrs)
    base_off, file_off = make_model("Off", AsyncAttrs)
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(base_l1.metadata.create_all)
        keys = [f"uploads/2024/05/{uuid.uuid4().hex}.jpg" for _ in range(ROWS)]
        await conn.execute(
            insert(file_l1), [{"id": i + 1, "object_key": k} for i, k in enumerate(keys)]
        )
    # As an app would: one SignedURLs from the URL (the async client is built from it).
    urls = SignedURLs(OSSSigner(bucket), redis=args.redis_url, key_prefix=prefix)
    urls.install(base_l1)
    urls_off = SignedURLs(
        OSSSigner(bucket), redis=args.redis_url, key_prefix=prefix, local_cache_size=0
    )
    urls_off.install(base_off)
    # The same cache on clients with redis-py's pure-Python reply parser, beside the default
    # one (hiredis, when the `fast` extra is installed).
    base_py, file_py = make_model("PyParser", AsyncAttrs)
    raw_py = pure_parser_client(args.redis_url, urls.settings.socket_timeout)
    lib_py = pure_parser_client(args.redis_url, urls.settings.socket_timeout)
    urls_py = SignedURLs(
        OSSSigner(bucket), redis=args.redis_url, async_redis=lib_py, key_prefix=prefix
    )
    urls_py.install(base_py)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    session_l1, session_off, session_py = sessions(), sessions(), sessions()
    rows = list(await session_l1.scalars(select(file_l1).order_by(file_l1.id)))
    rows_off = list(await session_off.scalars(select(file_off).order_by(file_off.id)))
    page_py = list(await session_py.scalars(select(file_py).order_by(file_py.id).limit(PAGE)))
    page = rows[:PAGE]
    one_off = rows_off[0]
    misses = rows_off[PAGE:]  # plain obj.url on these: L1 off, signed directly every time

    raw = async_client_from_url(args.redis_url, socket_timeout=urls.settings.socket_timeout)
    await urls.aresolve(page)  # Redis warm, listener started
    deadline = time.monotonic() + 10
    while not urls.channel.live:
        if time.monotonic() > deadline:
            sys.exit("the invalidation listener did not subscribe within 10 s")
        await asyncio.sleep(0.01)
    await urls.aresolve(page)
    await urls_py.aresolve(page_py)
    while not urls_py.channel.live:
        await asyncio.sleep(0.01)
    stored = await raw.mget([f"{prefix}{f.id}" for f in page])
    raw_keys = [f"{raw_prefix}{i}" for i in range(PAGE)]
    await raw.mset(dict(zip(raw_keys, stored, strict=True)))
    assert await one_off.awaitable_attrs.url == (await urls.aresolve([rows[0]]))[0]

    async def scheduled_done(u: SignedURLs) -> None:
        while u._scheduled:
            await asyncio.sleep(0)

    # -- cases --------------------------------------------------------------------------------

    async def v1_sign(n: int) -> int:
        sign, key = bucket.sign_url, page[0].object_key
        t0 = perf_ns()
        for _ in range(n):
            sign("GET", key, URL_TTL)
        return perf_ns() - t0

    async def raw_get(n: int) -> int:
        get, key = raw.get, raw_keys[0]
        t0 = perf_ns()
        for _ in range(n):
            await get(key)
        return perf_ns() - t0

    async def raw_mget(n: int) -> int:
        mget = raw.mget
        t0 = perf_ns()
        for _ in range(n):
            await mget(raw_keys)
        return perf_ns() - t0

    async def raw_mget_py(n: int) -> int:
        mget = raw_py.mget
        t0 = perf_ns()
        for _ in range(n):
            await mget(raw_keys)
        return perf_ns() - t0

    tag, min_validity = f" {signer_tag(urls.signer.name)} ", urls.settings.min_validity
    url_prefixes, astore = urls.signer.url_prefixes, urls.async_store
    assert urls.local is not None
    l1 = urls.local._data

    async def floor(n: int) -> int:
        """What any L1-cold aresolve() must do, inlined: the rows' keys, one awaited MGET
        through the library's own async client, the checks before a URL is served, one
        bulk fill of the L1 (as bench_fast_path's floor row, awaited)."""
        total = 0
        for _ in range(n):
            urls.clear_local()
            t0 = perf_ns()
            keys, object_keys = [], []
            for f in page:
                d = f.__dict__
                object_keys.append(d["object_key"])
                keys.append(prefix + str(d["id"]))
            values = await astore.get_many(keys)
            served = floor_checks(
                keys, values, object_keys, url_prefixes(object_keys), tag, min_validity
            )
            l1.update(served)
            total += perf_ns() - t0
        return total

    def get_in_greenlet() -> Any:
        return await_only(raw.get(raw_keys[0]))

    async def spawn_get(n: int) -> int:
        """What SQLAlchemy's awaitable_attrs costs around one raw GET: greenlet_spawn of a
        getter that await_only()s it."""
        t0 = perf_ns()
        for _ in range(n):
            await greenlet_spawn(get_in_greenlet)
        return perf_ns() - t0

    async def raw_gets(n: int) -> int:
        get = raw.get
        t0 = perf_ns()
        for _ in range(n):
            for key in raw_keys:
                await get(key)
        return perf_ns() - t0

    def aresolve_l1_cold(u: SignedURLs, objects: list[Any]) -> Callable[[int], Awaitable[int]]:
        """``aresolve()`` of ``objects`` with ``u``'s L1 emptied before each (not timed)."""

        async def run(n: int) -> int:
            total = 0
            for _ in range(n):
                u.clear_local()
                t0 = perf_ns()
                await u.aresolve(objects)
                total += perf_ns() - t0
            return total

        return run

    async def aresolve_l1_warm(n: int) -> int:
        aresolve = urls.aresolve
        await aresolve(page)
        t0 = perf_ns()
        for _ in range(n):
            await aresolve(page)
        return perf_ns() - t0

    async def awaitable_attr(n: int) -> int:
        f = one_off
        t0 = perf_ns()
        for _ in range(n):
            await f.awaitable_attrs.url
        return perf_ns() - t0

    cursor = [0]

    async def plain_miss(n: int) -> int:
        start = cursor[0] % (len(misses) - n)
        batch = misses[start : start + n]
        cursor[0] += n
        t0 = perf_ns()
        for f in batch:
            _ = f.url
        elapsed = perf_ns() - t0
        await scheduled_done(urls_off)  # the writes run on the loop, outside the timed part
        return elapsed

    async def plain_miss_drained(n: int) -> int:
        start = cursor[0] % (len(misses) - n)
        batch = misses[start : start + n]
        cursor[0] += n
        t0 = perf_ns()
        for f in batch:
            _ = f.url
        await scheduled_done(urls_off)
        return perf_ns() - t0

    cases = {
        c.name: c
        for c in [
            Case("v1", v1_sign, 40),
            Case("get", raw_get, 10),
            Case("mget", raw_mget, 5),
            Case("gets", raw_gets, 1),
            Case("aresolve_l1_cold", aresolve_l1_cold(urls, page), 5),
            Case("aresolve_l1_cold_py", aresolve_l1_cold(urls_py, page_py), 5),
            Case("mget_py", raw_mget_py, 5),
            Case("floor", floor, 5),
            Case("spawn_get", spawn_get, 10),
            Case("aresolve_l1_warm", aresolve_l1_warm, 20),
            Case("awaitable_attr", awaitable_attr, 10),
            Case("plain_miss", plain_miss, 40),
            Case("plain_miss_drained", plain_miss_drained, 40),
        ]
    }
    order = list(cases.values())
    for case in order:  # warm-up, not recorded
        await case.run(case.n)
    gc.collect()
    gc.freeze()
    started = time.monotonic()
    for _ in range(args.rounds):
        random.shuffle(order)
        for case in order:
            await case.sample()
    timing_s = time.monotonic() - started
    gc.unfreeze()

    # -- table --------------------------------------------------------------------------------
    m = {name: case.median_us for name, case in cases.items()}
    table = Table()
    row, check = table.row, table.check
    row("baseline: oss2 V1 sign_url", f"{m['v1']:.2f} us")
    row("baseline: redis.asyncio GET (1 key)", f"{m['get']:.1f} us")
    row("baseline: redis.asyncio MGET (100 keys)", f"{m['mget']:.1f} us")
    row("baseline: 100 awaited redis.asyncio GETs", f"{m['gets']:.0f} us")
    row(
        "floor: the least an L1-cold aresolve() must do",
        f"{m['floor']:.0f} us",
        f"{m['floor'] / m['mget']:.3f}x MGET",
    )
    row(
        "floor: greenlet_spawn + await_only of one raw GET",
        f"{m['spawn_get']:.1f} us",
        f"{m['spawn_get'] / m['get']:.3f}x GET",
    )
    ratio = m["aresolve_l1_cold"] / m["mget"]
    row(
        "aresolve() 100 rows, L1 cold, Redis warm",
        f"{m['aresolve_l1_cold']:.0f} us",
        f"{ratio:.3f}x MGET",
        "<= 1.8x",
        check(ratio <= 1.8),
    )
    ratio = m["aresolve_l1_cold"] / m["floor"]
    row(
        "  the same, against the floor row",
        "",
        f"{ratio:.3f}x floor",
        "<= 1.15x",
        check(ratio <= 1.15),
    )
    row("baseline: redis.asyncio MGET (100 keys), pure-Python parser", f"{m['mget_py']:.1f} us")
    ratio = m["aresolve_l1_cold_py"] / m["mget_py"]
    row(
        "aresolve() 100 rows, L1 cold, pure-Python parser",
        f"{m['aresolve_l1_cold_py']:.0f} us",
        f"{ratio:.3f}x MGET (pure)",
        "<= 1.8x",
        check(ratio <= 1.8),
    )
    speed = m["gets"] / m["aresolve_l1_warm"]
    row(
        "aresolve() 100 rows, L1 warm",
        f"{m['aresolve_l1_warm']:.1f} us",
        f"{speed:.0f}x faster than 100 GETs",
        ">= 50x",
        check(speed >= 50),
    )
    ratio = m["awaitable_attr"] / m["get"]
    row(
        "await obj.awaitable_attrs.url, Redis hit",
        f"{m['awaitable_attr']:.1f} us",
        f"{ratio:.3f}x GET",
        "<= 1.3x",
        check(ratio <= 1.3),
    )
    ratio = m["awaitable_attr"] / m["spawn_get"]
    row("  the same, against its floor row", "", f"{ratio:.3f}x floor")
    ratio = m["plain_miss"] / m["v1"]
    row(
        "plain obj.url in a coroutine, L1 miss",
        f"{m['plain_miss']:.1f} us",
        f"{ratio:.3f}x V1",
        "<= 1.3x",
        check(ratio <= 1.3),
    )
    row(
        "  the same, scheduled writes drained too",
        f"{m['plain_miss_drained']:.1f} us",
        f"{m['plain_miss_drained'] / m['v1']:.2f}x V1",
    )
    print(
        f"sqla_signed_urls async: {args.rounds} interleaved rounds in {timing_s:.0f} s, "
        f"Redis {sync_raw.info('server')['redis_version']} at {args.redis_url}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; redis-py reply parser: {PARSER} "
        "(every row but the pure-Python ones)"
    )
    table.print()

    # -- clean up -----------------------------------------------------------------------------
    await session_l1.close()
    await session_off.close()
    await session_py.close()
    for u in (urls, urls_off, urls_py):
        u.uninstall()
        await u.aclose()
    await raw.aclose()
    await raw_py.aclose()
    await lib_py.aclose()
    await engine.dispose()
    for pattern in (prefix, raw_prefix):
        found = list(sync_raw.scan_iter(match=pattern + "*", count=1000))
        for i in range(0, len(found), 1000):
            sync_raw.unlink(*found[i : i + 1000])
    sync_raw.close()
    return 0 if table.passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--rounds", type=int, default=500, help="samples per case (default 500)")
    return asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
