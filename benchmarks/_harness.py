"""What the benchmark scripts share: cases sampled in interleaved rounds, and the table of
medians, ratios and targets they print."""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.utils import HIREDIS_AVAILABLE
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_signed_urls import ObjectKey

perf_ns = time.perf_counter_ns
#: The reply parser redis-py uses by default here: hiredis when installed (the ``fast`` extra).
PARSER = "hiredis" if HIREDIS_AVAILABLE else "pure Python"
#: The OSS endpoint the benchmarks sign for (offline: nothing is sent).
ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"
URL_TTL = 14400
PAGE = 100


def make_model(tag: str, *mixins: type) -> tuple[type[DeclarativeBase], type[Any]]:
    """A declarative base and its ``File`` model over the ``files`` table; each call maps the
    table again, so one SignedURLs per base can be installed side by side."""

    class Base(*mixins, DeclarativeBase):  # type: ignore[misc]
        pass

    class File(Base):
        __tablename__ = "files"
        id: Mapped[int] = mapped_column(primary_key=True)
        object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
        file_type: Mapped[str] = mapped_column(String(32), default="attachment")

    File.__name__ = File.__qualname__ = f"File{tag}"
    return Base, File


class Case:
    """``run(n)`` returns the nanoseconds that n repetitions of the timed part took."""

    def __init__(self, name: str, run: Callable[[int], int], n: int) -> None:
        self.name = name
        self.run = run
        self.n = n
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(self.run(self.n) / self.n)

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples) / 1000.0


def run_rounds(cases: Iterable[Case], rounds: int) -> tuple[dict[str, float], float]:
    """Warm every case up, then sample each once per round, in a fresh random order each
    round, with the heap frozen; return the median microseconds by name and the seconds
    the rounds took."""
    order = list(cases)
    for case in order:  # warm-up, not recorded
        case.run(case.n)
    gc.collect()
    gc.freeze()
    started = time.monotonic()
    try:
        for _ in range(rounds):
            random.shuffle(order)
            for case in order:
                case.sample()
    finally:
        gc.unfreeze()
    return {case.name: case.median_us for case in order}, time.monotonic() - started


class Table:
    """Rows of ``case, median, ratio, target, result``; :meth:`check` records a verdict."""

    HEADER = ("case", "median", "ratio", "target", "result")

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.results: list[bool] = []

    def row(
        self, label: str, value: str, ratio: str = "", target: str = "", verdict: str = ""
    ) -> None:
        self.rows.append((label, value, ratio, target, verdict))

    def check(self, ok: bool) -> str:
        self.results.append(ok)
        return "PASS" if ok else "FAIL"

    @property
    def passed(self) -> bool:
        return all(self.results)

    def print(self) -> None:
        widths = [max(len(r[i]) for r in [*self.rows, self.HEADER]) for i in range(5)]
        line = "  ".join(h.ljust(w) for h, w in zip(self.HEADER, widths, strict=True))
        print(line)
        print("-" * len(line))
        for r in self.rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def floor_checks(
    keys: list[str],
    values: list[Any],
    object_keys: list[str],
    prefixes: list[str | None],
    tag: str,
    min_validity: int,
) -> list[tuple[str, tuple[str, str, int]]]:
    """The least an L1-cold page must check before serving a value, inlined in one loop:
    signer tag, object key, both lifetimes and the URL prefix; returns the L1 items to fill.
    Nothing else: no malformed values, counters or signals. ``tag`` is ``" <signer tag> "``."""
    now = time.time()
    served = []
    for key, value, object_key, url_prefix in zip(keys, values, object_keys, prefixes, strict=True):
        data = value.decode()
        until = int(data[11:21])
        if (
            data.startswith(tag, 21)
            and data.endswith(object_key)
            and until > now
            and int(data[:10]) - now >= min_validity
        ):
            url = data[31 : len(data) - len(object_key) - 1]
            if url.startswith(url_prefix or ""):
                served.append((key, (object_key, url, until)))
    return served
