"""Refresh benchmark: the cost of ``refresh_expired_urls`` follows what expires.

The same 1,000 entries end their cache lifetime within the refresh window while 100,000 or
1,000,000 entries are cached in all; the refresh re-signs those 1,000 (LocalSigner) and must not
take more than 1.5x as long with the bigger cache. Both caches are filled first (pipelined
writes of values in the library's format, indexed like the library indexes them), then the
rounds alternate between them in random order; the table shows medians.

    .venv/bin/python benchmarks/bench_refresh.py                        # embedded fakeredis
    .venv/bin/python benchmarks/bench_refresh.py --redis-url redis://127.0.0.1:6379/13

On a real Redis it works under key prefixes of its own and removes its keys when done.
Exit status: 0 when the target holds, 1 when it does not, 2 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import uuid
from typing import Any

import fakeredis
import redis

from sqla_signed_urls import CacheService, SignedURLs
from sqla_signed_urls.cache.base import encode_entry, signer_tag
from sqla_signed_urls.signers import LocalSigner

TARGET_RATIO = 1.5
FILL_CHUNK = 10_000


class Case:
    """One cache of ``size`` entries, ``expiring`` of which end within the window."""

    def __init__(self, size: int, expiring: int, client: Any, prefix: str, within: int) -> None:
        self.size, self.expiring, self.within = size, expiring, within
        self.client = client
        signer = LocalSigner(secret="bench-secret-0123456789abcdef", base_url="/files")
        self.urls = SignedURLs(signer, redis=client, key_prefix=prefix, local_cache_size=0)
        self.service = CacheService(self.urls, batch_size=500)
        self.tag = signer_tag(signer.name)
        self.index = f"{prefix}#expiry"
        self.prefix = prefix
        self.samples: list[float] = []

    def _write(self, rows: list[tuple[int, int, int]]) -> None:
        """Write ``(id, cache_until, expires_at)`` rows in pipelined chunks."""
        now = int(time.time())
        for start in range(0, len(rows), FILL_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            index: dict[str, int] = {}
            for i, until, expires_at in rows[start : start + FILL_CHUNK]:
                key = f"{self.prefix}{i}"
                url = f"/files/bench/{i}.png?expires={expires_at}&signature=old"
                value = encode_entry((url, expires_at, until), self.tag, f"bench/{i}.png")
                pipe.set(key, value, ex=until - now)
                index[key] = until
            pipe.zadd(self.index, index)
            pipe.execute()

    def fill(self) -> float:
        started = time.perf_counter()
        now = int(time.time())
        min_validity = self.urls.settings.min_validity
        cold = self.size - self.expiring
        # Lifetimes well past the window: refresh must not even look at these.
        rows = []
        for i in range(cold):
            until = now + self.within + 600 + i % 1200
            rows.append((i, until, until + min_validity))
            if len(rows) >= FILL_CHUNK * 10:
                self._write(rows)
                rows = []
        self._write(rows)
        self.arm()
        return time.perf_counter() - started

    def arm(self) -> None:
        """(Re)set the expiring entries: ending within the window, their URLs due a re-sign."""
        now = int(time.time())
        min_validity = self.urls.settings.min_validity
        first = self.size - self.expiring
        rows = []
        for j in range(self.expiring):
            until = now + 30 + j % (self.within - 60)
            rows.append((first + j, until, until + min_validity))
        self._write(rows)

    def round(self) -> None:
        self.arm()
        gc.collect()
        started = time.perf_counter()
        refreshed = self.service.refresh_expired_urls(self.within)
        self.samples.append(time.perf_counter() - started)
        if refreshed != self.expiring:
            raise SystemExit(f"expected {self.expiring} refreshed, got {refreshed}")

    def cleanup(self) -> None:
        self.service.clear_file_url_cache()
        self.client.delete(f"{self.prefix}#stats")
        self.urls.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="a real Redis (default: embedded fakeredis)")
    parser.add_argument("--sizes", default="100000,1000000", help="cached entries per case")
    parser.add_argument("--expiring", type=int, default=1000, help="entries ending in the window")
    parser.add_argument("--within", type=int, default=600, help="refresh window in seconds")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per case")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]

    if args.redis_url:
        try:
            client_for: Any = redis.Redis.from_url(args.redis_url, socket_timeout=30)
            client_for.ping()
        except redis.RedisError as exc:
            print(f"cannot reach Redis at {args.redis_url}: {exc}", file=sys.stderr)
            return 2
        backend = f"Redis {client_for.info('server')['redis_version']} at {args.redis_url}"
    else:
        backend = f"embedded fakeredis {fakeredis.__version__}"

    run_id = uuid.uuid4().hex[:8]
    cases: list[Case] = []
    try:
        for size in sizes:
            client = client_for if args.redis_url else fakeredis.FakeRedis()
            case = Case(size, args.expiring, client, f"bench{run_id}:{size}:", args.within)
            cases.append(case)
            print(f"filling {size:,} entries ...", end=" ", flush=True)
            print(f"{case.fill():.1f} s", flush=True)
        case_order = list(cases)
        for _ in range(args.rounds):
            random.shuffle(case_order)
            for case in case_order:
                case.round()
    finally:
        if args.redis_url:
            for case in cases:
                case.cleanup()

    print()
    print(
        f"refresh_expired_urls(within={args.within}): {args.expiring:,} entries re-signed "
        f"(LocalSigner), {backend}, median of {args.rounds} rounds"
    )
    header = f"{'cached':>11}  {'expiring':>8}  {'median ms':>9}  {'min ms':>7}  {'µs/entry':>8}"
    print(header)
    print("-" * len(header))
    medians = {}
    for case in cases:
        median = statistics.median(case.samples)
        medians[case.size] = median
        print(
            f"{case.size:>11,}  {case.expiring:>8,}  {median * 1e3:>9.1f}  "
            f"{min(case.samples) * 1e3:>7.1f}  {median / case.expiring * 1e6:>8.1f}"
        )
    small, big = min(medians), max(medians)
    ratio = medians[big] / medians[small]
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print()
    print(
        f"ratio {big:,} vs {small:,} cached: {ratio:.2f}x "
        f"(target <= {TARGET_RATIO:.2f}x)  {verdict}"
    )
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
