"""Fault figures: what Redis trouble costs a page, measured in one run.

    .venv/bin/python benchmarks/bench_faults.py

Starts its own throwaway ``redis-server`` processes and a silent socket on loopback ports
(``tests/servers/_processes.py``), so it needs ``redis-server`` on PATH and nothing else. Prints:

- added time per ``file.url`` while the circuit breaker is open (median, µs), next to plain
  signing of the same key with the same signer (oss2 V1 offline, LocalSigner);
- the same for ``resolve()`` of a 100-row page;
- what the first failure of an outage costs: refused connection, silent server;
- how long after a restart caching resumes by itself (``retry_after`` 0.5 s here);
- how long a commit's invalidation takes to reach another process's in-process layer
  (pub/sub, measured with two SignedURLs that share nothing but the Redis server).

Benchmarks never assert; the table is for docs/reliability.md.
"""

from __future__ import annotations

import gc
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import oss2  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402
from sqlalchemy.pool import StaticPool  # noqa: E402

from sqla_signed_urls import ObjectKey, SignedURLs  # noqa: E402
from sqla_signed_urls.signers import LocalSigner, OSSSigner  # noqa: E402
from tests.servers._processes import RedisServer, SilentServer, free_port  # noqa: E402

perf_ns = time.perf_counter_ns
PAGE = 100
ROUNDS = 15
CALLS = 1000


class Base(DeclarativeBase):
    pass


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


def signers() -> dict[str, Any]:
    bucket = oss2.Bucket(
        oss2.Auth("bench-key-id", "bench-secret-0123456789"),
        "https://oss-cn-hangzhou.aliyuncs.com",
        "campus-forum",
    )
    return {
        "oss2 V1": OSSSigner(bucket),
        "LocalSigner": LocalSigner("bench-local-secret-0123456789abcdef", "/files"),
    }


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) / 1000.0


def per_call_ns(fn: Any, calls: int) -> float:
    start = perf_ns()
    for _ in range(calls):
        fn()
    return (perf_ns() - start) / calls


def breaker_open_figures(session: Session, files: list[Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    dead = f"redis://127.0.0.1:{free_port()}/0"
    for name, signer in signers().items():
        urls = SignedURLs(signer, redis=dead, retry_after=3600.0)
        urls.install(Base)
        try:
            file = files[0]
            assert file.url is not None  # opens the breaker
            assert not urls.redis_available
            expires_at = urls.expires_at()
            key = file.object_key
            cases = {
                "plain": lambda s=signer, k=key, e=expires_at: s.sign(k, expires_at=e),
                "cached": lambda f=file: f.url,
                "page_plain": lambda s=signer, e=expires_at: [
                    s.sign(f.object_key, expires_at=e) for f in files
                ],
                "page_cached": lambda u=urls: u.resolve(files),
            }
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(ROUNDS):
                gc.disable()
                for case, fn in cases.items():
                    calls = CALLS if case in ("plain", "cached") else CALLS // PAGE * 5
                    samples[case].append(per_call_ns(fn, calls))
                gc.enable()
            plain, cached = samples["plain"], samples["cached"]
            page_plain, page_cached = samples["page_plain"], samples["page_cached"]
            p, c = median_us(plain), median_us(cached)
            rows.append(
                (f"file.url, breaker open ({name})", f"{c:.1f}", f"{p:.1f}", f"{c - p:+.1f}")
            )
            pp, pc = median_us(page_plain), median_us(page_cached)
            rows.append(
                (
                    f"resolve() {PAGE} rows, breaker open ({name})",
                    f"{pc:.0f}",
                    f"{pp:.0f}",
                    f"{(pc - pp) / PAGE:+.1f} per row",
                )
            )
        finally:
            urls.uninstall()
            urls.close()
            urls.redis.close()
    return rows


def first_failure_figures(session: Session, files: list[Any]) -> list[tuple[str, str]]:
    rows = []
    signer = signers()["oss2 V1"]
    cases: list[tuple[str, Any]] = [("refused (nothing listens)", None), ("silent server", None)]
    for label, _ in cases:
        silent = SilentServer().start() if label == "silent server" else None
        url = silent.url() if silent else f"redis://127.0.0.1:{free_port()}/0"
        urls = SignedURLs(signer, redis=url, retry_after=3600.0, local_cache_size=0)
        urls.install(Base)
        try:
            start = perf_ns()
            files[1].url  # noqa: B018
            first = (perf_ns() - start) / 1e6
            start = perf_ns()
            files[2].url  # noqa: B018
            second = (perf_ns() - start) / 1e3
            rows.append((f"first failure: {label}", f"{first:.1f} ms, next call {second:.0f} µs"))
        finally:
            urls.uninstall()
            urls.close()
            urls.redis.close()
            if silent:
                silent.stop()
    return rows


def recovery_figure(tmp: Path, files: list[Any]) -> tuple[str, str]:
    server = RedisServer(tmp / "recovery").start()
    urls = SignedURLs(signers()["LocalSigner"], redis=server.url(), retry_after=0.5)
    urls.install(Base)
    try:
        files[3].url  # noqa: B018
        server.kill()
        files[3].url  # noqa: B018 - opens the breaker
        server.start()
        back = perf_ns()
        import redis

        with redis.Redis(port=server.port, socket_timeout=5) as check:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                files[4].url  # noqa: B018
                if check.exists("file_url:5"):
                    break
                time.sleep(0.005)
        took = (perf_ns() - back) / 1e6
        return ("caching resumes after a restart (at most retry_after = 0.5 s)", f"{took:.0f} ms")
    finally:
        urls.uninstall()
        urls.close()
        urls.redis.close()
        server.close()


def invalidation_figure(tmp: Path, session: Session) -> tuple[str, str]:
    server = RedisServer(tmp / "pubsub").start()
    reader_signer = LocalSigner("bench-local-secret-0123456789abcdef", "/files")
    writer = SignedURLs(signers()["LocalSigner"], redis=server.url(), local_cache_size=0)
    reader = SignedURLs(reader_signer, redis=server.url())
    calls = {"n": 0}
    original = reader_signer.sign

    def counting_sign(object_key: str, *, expires_at: int) -> str:
        calls["n"] += 1
        return original(object_key, expires_at=expires_at)

    reader_signer.sign = counting_sign  # type: ignore[method-assign]
    writer.install(Base)
    reader.install(Base)
    samples = []
    try:
        file = session.get(File, 7)
        assert file is not None
        reader.url_for(file)
        deadline = time.monotonic() + 10
        while not reader.channel.live and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(50):
            reader.url_for(file)  # into its L1
            before = calls["n"]
            start = perf_ns()
            writer.invalidate(file)
            while calls["n"] == before and perf_ns() - start < 5e9:
                time.sleep(0.0001)  # let the listener thread have the GIL
                reader.url_for(file)
            samples.append((perf_ns() - start) / 1e6)
    finally:
        for u in (writer, reader):
            u.uninstall()
        for u in (writer, reader):
            u.close()
            u.redis.close()
        server.close()
    return (
        "invalidation reaches another process's L1 (pub/sub)",
        f"median {statistics.median(samples):.2f} ms, max {max(samples):.2f} ms",
    )


def main() -> int:
    import tempfile

    logging.getLogger("sqla_signed_urls").setLevel(logging.ERROR)
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            File(id=i, object_key=f"posts/{i}/image-{i}.png") for i in range(1, PAGE + 1)
        )
        session.commit()
    with Session(engine, expire_on_commit=False) as session, tempfile.TemporaryDirectory() as tmp:
        files = list(session.query(File).order_by(File.id))
        print(f"Python {sys.version.split()[0]}; medians of {ROUNDS} rounds")
        print()
        head = ("case", "µs per call", "plain signing µs", "added by sqla_signed_urls")
        rows = breaker_open_figures(session, files)
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        for r in [head, tuple("-" * w for w in widths), *rows]:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        print()
        other = first_failure_figures(session, files)
        other.append(recovery_figure(Path(tmp), files))
        other.append(invalidation_figure(Path(tmp), session))
        width = max(len(r[0]) for r in other)
        for label, value in other:
            print(f"{label.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
