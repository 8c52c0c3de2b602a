"""Signer benchmark: our V4 presigners next to botocore and oss2, and the L1 hit per signer.

Rows, each measured side by side with its baseline in one run:

- ``S3Signer.sign`` (our SigV4) against botocore's ``generate_presigned_url("get_object")`` on
  the same inputs (checked byte for byte first, at a frozen signing time): static keys, and a
  session token with a ``Content-Disposition`` override. Target: >= 10x faster.
- ``S3Signer.sign`` with botocore's ``RefreshableCredentials`` (as a role or SSO session gives)
  against static keys: fresh credentials are reused, not frozen again per URL. Target: <= 1.2x.
- ``OSSSigner.sign`` with V4 credentials (our code) against oss2's ``bucket.sign_url`` with
  ``AuthV4`` and with ``StsAuth`` V4 (checked byte for byte first). Target: >= 3x faster.
- ``OSSSigner.sign`` with V1 credentials (our code) against oss2's ``bucket.sign_url`` with
  ``Auth`` and, with a ``Content-Disposition`` override, ``StsAuth`` V1 (checked byte for byte
  first, at a frozen clock). Target: >= 3x faster.
- ``file.url`` served from the in-process layer (L1) with an ``S3Signer`` and with an OSS V1
  signer: the signer must not matter once a URL is cached. Target: within 0.8x .. 1.25x.

    .venv/bin/python benchmarks/bench_signers.py                 # in-process Redis (fakeredis)
    .venv/bin/python benchmarks/bench_signers.py --redis-url redis://127.0.0.1:6379/13

Signing is offline; the L1 rows touch no Redis once warm, so the in-process Redis is the
default. Every case is sampled once per round, rounds run the cases in a fresh random order,
and the table shows medians. Exit status: 0 when every target passes, 1 when one fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any
from unittest import mock

import botocore.session
import fakeredis
import oss2
import oss2.auth
from _harness import Case, perf_ns
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from sqla_signed_urls import ObjectKey, SignedURLs
from sqla_signed_urls.signers import OSSSigner, S3Signer, Signer

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "bench-secret-key-0123456789abcdef"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDH+bench/session+token=="
KEY = "uploads/2024/05/8f14e45fceea167a5a36dedd4bea2543.jpg"
DISPOSITION = 'attachment; filename="holiday photo.jpg"'
ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"
URL_TTL = 14400


def repeat(call: Callable[[], Any]) -> Callable[[int], int]:
    def run(n: int) -> int:
        t0 = perf_ns()
        for _ in range(n):
            call()
        return perf_ns() - t0

    return run


def isolate_from_aws_config() -> None:
    """botocore reads environment variables and config files; measure its defaults."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


# -- the L1 hit per signer ----------------------------------------------------------------------


def l1_reader(signer: Signer, redis_url: str | None) -> tuple[SignedURLs, Any, Callable[[], Any]]:
    """A loaded ``File`` whose URL is in the L1 of a ``SignedURLs`` over ``signer``."""

    class Base(DeclarativeBase):
        pass

    class File(Base):
        __tablename__ = "files"
        id: Mapped[int] = mapped_column(primary_key=True)
        object_key: Mapped[str | None] = mapped_column(ObjectKey(512))

    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    redis: Any = redis_url or fakeredis.FakeRedis(server=fakeredis.FakeServer())
    urls = SignedURLs(signer, redis=redis, key_prefix=f"bench{uuid.uuid4().hex[:8]}:file_url:")
    urls.install(Base)
    session = Session(engine)
    session.add(File(id=1, object_key=KEY))
    session.commit()
    file = session.get(File, 1)
    _ = file.url  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while not urls.channel.live:  # the L1 is used once the invalidation listener subscribed
        if time.monotonic() > deadline:
            sys.exit("the invalidation listener did not subscribe within 10 s")
        time.sleep(0.01)
    _ = file.url  # type: ignore[union-attr]
    assert urls.local is not None and len(urls.local) == 1

    def read() -> Any:
        return file.url  # type: ignore[union-attr]

    return urls, session, read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="a real Redis (default: in-process)")
    parser.add_argument("--rounds", type=int, default=600, help="samples per case (default 600)")
    args = parser.parse_args()
    isolate_from_aws_config()

    # -- signers and their baselines ----------------------------------------------------------
    boto = botocore.session.Session()
    clients = {
        token: boto.create_client(
            "s3",
            region_name="eu-central-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            aws_session_token=token,
            config=Config(signature_version="s3v4"),
        )
        for token in (None, TOKEN)
    }
    s3 = S3Signer(
        "campus-forum",
        region="eu-central-1",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    s3_token = S3Signer(
        "campus-forum",
        region="eu-central-1",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        session_token=TOKEN,
    )
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=12)
    refreshing = RefreshableCredentials(
        ACCESS_KEY, SECRET_KEY, None, expiry, lambda: {}, "assume-role"
    )
    s3_refreshing = S3Signer("campus-forum", region="eu-central-1", credentials=refreshing)
    bucket_v1 = oss2.Bucket(oss2.Auth("id", SECRET_KEY), ENDPOINT, "bench")
    sts_v1_auth = oss2.StsAuth("STS.id", SECRET_KEY, TOKEN, auth_version=oss2.AUTH_VERSION_1)
    bucket_sts_v1 = oss2.Bucket(sts_v1_auth, ENDPOINT, "bench")
    oss_v1, oss_sts_v1 = OSSSigner(bucket_v1), OSSSigner(bucket_sts_v1)
    bucket_v4 = oss2.Bucket(oss2.AuthV4("id", SECRET_KEY), ENDPOINT, "bench", region="cn-hangzhou")
    sts_auth = oss2.StsAuth("STS.id", SECRET_KEY, TOKEN, auth_version=oss2.AUTH_VERSION_4)
    bucket_sts = oss2.Bucket(sts_auth, ENDPOINT, "bench", region="cn-hangzhou")
    oss_v4, oss_sts = OSSSigner(bucket_v4), OSSSigner(bucket_sts)

    # Same inputs, same URLs: checked at a frozen signing time before anything is timed.
    signed_at = int(time.time())
    moment = dt.datetime.fromtimestamp(signed_at, dt.timezone.utc).replace(tzinfo=None)
    expires_at = signed_at + URL_TTL

    class Frozen(dt.datetime):
        @classmethod
        def utcnow(cls) -> Any:
            return moment

    class FrozenTime:  # what oss2.auth reads as ``time`` for V1 expiries
        @staticmethod
        def time() -> float:
            return signed_at + 0.5

    with (
        mock.patch("botocore.auth.get_current_datetime", return_value=moment),
        mock.patch.object(oss2.auth, "datetime", Frozen),
        mock.patch.object(oss2.auth, "time", FrozenTime),
    ):
        plain = {"Bucket": "campus-forum", "Key": KEY}
        assert s3.sign(KEY, expires_at=expires_at, signed_at=signed_at) == clients[
            None
        ].generate_presigned_url("get_object", Params=plain, ExpiresIn=URL_TTL)
        assert s3_token.sign_with(
            KEY,
            expires_at=expires_at,
            signed_at=signed_at,
            response_content_disposition=DISPOSITION,
        ) == clients[TOKEN].generate_presigned_url(
            "get_object",
            Params={**plain, "ResponseContentDisposition": DISPOSITION},
            ExpiresIn=URL_TTL,
        )
        for signer, bucket in ((oss_v4, bucket_v4), (oss_sts, bucket_sts)):
            assert signer.sign(KEY, expires_at=expires_at, signed_at=signed_at) == (
                bucket.sign_url("GET", KEY, URL_TTL)
            )
        assert oss_v1.sign(KEY, expires_at=expires_at) == bucket_v1.sign_url("GET", KEY, URL_TTL)
        assert oss_sts_v1.sign_with(
            KEY, expires_at=expires_at, response_content_disposition=DISPOSITION
        ) == bucket_sts_v1.sign_url(
            "GET", KEY, URL_TTL, params={"response-content-disposition": DISPOSITION}
        )

    boto_plain, boto_token = clients[None], clients[TOKEN]
    with_disposition = {**plain, "ResponseContentDisposition": DISPOSITION}

    urls_s3, session_s3, read_s3 = l1_reader(
        S3Signer(
            "campus-forum",
            region="eu-central-1",
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
        ),
        args.redis_url,
    )
    urls_v1, session_v1, read_v1 = l1_reader(OSSSigner(bucket_v1), args.redis_url)

    def ours_s3(n: int) -> int:
        sign, now = s3.sign, int(time.time())
        t0 = perf_ns()
        for _ in range(n):
            sign(KEY, expires_at=now + URL_TTL, signed_at=now)
        return perf_ns() - t0

    def ours_s3_refreshing(n: int) -> int:
        sign, now = s3_refreshing.sign, int(time.time())
        t0 = perf_ns()
        for _ in range(n):
            sign(KEY, expires_at=now + URL_TTL, signed_at=now)
        return perf_ns() - t0

    def ours_s3_token(n: int) -> int:
        sign, now = s3_token.sign_with, int(time.time())
        t0 = perf_ns()
        for _ in range(n):
            sign(
                KEY,
                expires_at=now + URL_TTL,
                signed_at=now,
                response_content_disposition=DISPOSITION,
            )
        return perf_ns() - t0

    def ours_oss(signer: OSSSigner) -> Callable[[int], int]:
        def run(n: int) -> int:
            sign, now = signer.sign, int(time.time())
            t0 = perf_ns()
            for _ in range(n):
                sign(KEY, expires_at=now + URL_TTL, signed_at=now)
            return perf_ns() - t0

        return run

    def ours_oss_v1(n: int) -> int:
        sign, now = oss_v1.sign, int(time.time())
        t0 = perf_ns()
        for _ in range(n):
            sign(KEY, expires_at=now + URL_TTL)
        return perf_ns() - t0

    def ours_oss_sts_v1(n: int) -> int:
        sign, now = oss_sts_v1.sign_with, int(time.time())
        t0 = perf_ns()
        for _ in range(n):
            sign(KEY, expires_at=now + URL_TTL, response_content_disposition=DISPOSITION)
        return perf_ns() - t0

    v1_disposition = {"response-content-disposition": DISPOSITION}
    cases = {
        c.name: c
        for c in [
            Case(
                "boto",
                repeat(
                    lambda: boto_plain.generate_presigned_url(
                        "get_object", Params=plain, ExpiresIn=URL_TTL
                    )
                ),
                10,
            ),
            Case(
                "boto_token",
                repeat(
                    lambda: boto_token.generate_presigned_url(
                        "get_object", Params=with_disposition, ExpiresIn=URL_TTL
                    )
                ),
                10,
            ),
            Case("s3", ours_s3, 200),
            Case("s3_token", ours_s3_token, 200),
            Case("s3_refreshing", ours_s3_refreshing, 200),
            Case("oss2_v4", repeat(lambda: bucket_v4.sign_url("GET", KEY, URL_TTL)), 20),
            Case("oss2_sts", repeat(lambda: bucket_sts.sign_url("GET", KEY, URL_TTL)), 20),
            Case("oss_v4", ours_oss(oss_v4), 200),
            Case("oss_sts", ours_oss(oss_sts), 200),
            Case("oss2_v1", repeat(lambda: bucket_v1.sign_url("GET", KEY, URL_TTL)), 40),
            Case(
                "oss2_sts_v1",
                repeat(
                    lambda: bucket_sts_v1.sign_url("GET", KEY, URL_TTL, params=dict(v1_disposition))
                ),
                40,
            ),
            Case("oss_v1", ours_oss_v1, 400),
            Case("oss_sts_v1", ours_oss_sts_v1, 400),
            Case("l1_s3", repeat(read_s3), 400),
            Case("l1_v1", repeat(read_v1), 400),
        ]
    }
    order = list(cases.values())
    for case in order:  # warm-up, not recorded
        case.run(case.n)
    gc.collect()
    gc.freeze()
    started = time.monotonic()
    for _ in range(args.rounds):
        random.shuffle(order)
        for case in order:
            case.sample()
    timing_s = time.monotonic() - started
    gc.unfreeze()
    assert len(urls_s3.local or ()) == 1 and len(urls_v1.local or ()) == 1  # still L1 hits

    # -- table --------------------------------------------------------------------------------
    m = {name: case.median_us for name, case in cases.items()}
    rows: list[tuple[str, str, str, str, str]] = []
    results: list[bool] = []

    def row(label: str, value: str, ratio: str = "", target: str = "", verdict: str = "") -> None:
        rows.append((label, value, ratio, target, verdict))

    def check(ok: bool) -> str:
        results.append(ok)
        return "PASS" if ok else "FAIL"

    def faster(label: str, ours: str, baseline: str, target: float) -> None:
        speed = m[baseline] / m[ours]
        row(
            label,
            f"{m[ours]:.2f} us",
            f"{speed:.1f}x faster",
            f">= {target:g}x",
            check(speed >= target),
        )

    row("baseline: botocore generate_presigned_url", f"{m['boto']:.1f} us")
    faster("S3Signer.sign (own SigV4)", "s3", "boto", 10)
    row("baseline: botocore, session token + disposition", f"{m['boto_token']:.1f} us")
    faster("S3Signer.sign_with, token + disposition", "s3_token", "boto_token", 10)
    ratio = m["s3_refreshing"] / m["s3"]
    row(
        "S3Signer.sign, refreshing credentials",
        f"{m['s3_refreshing']:.2f} us",
        f"{ratio:.2f}x static keys",
        "<= 1.2x",
        check(ratio <= 1.2),
    )
    row("baseline: oss2 AuthV4 sign_url", f"{m['oss2_v4']:.1f} us")
    faster("OSSSigner.sign, V4 (own code)", "oss_v4", "oss2_v4", 3)
    row("baseline: oss2 StsAuth V4 sign_url", f"{m['oss2_sts']:.1f} us")
    faster("OSSSigner.sign, STS V4 (own code)", "oss_sts", "oss2_sts", 3)
    row("baseline: oss2 V1 sign_url", f"{m['oss2_v1']:.1f} us")
    faster("OSSSigner.sign, V1 (own code)", "oss_v1", "oss2_v1", 3)
    row("baseline: oss2 StsAuth V1 sign_url + disposition", f"{m['oss2_sts_v1']:.1f} us")
    faster("OSSSigner.sign_with, STS V1 + disposition", "oss_sts_v1", "oss2_sts_v1", 3)
    row("file.url, L1 hit, OSS V1 signer", f"{m['l1_v1']:.3f} us")
    ratio = m["l1_s3"] / m["l1_v1"]
    row(
        "file.url, L1 hit, S3 signer",
        f"{m['l1_s3']:.3f} us",
        f"{ratio:.2f}x the V1 signer's",
        "0.8x .. 1.25x",
        check(0.8 <= ratio <= 1.25),
    )

    header = ("case", "median", "ratio", "target", "result")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(5)]
    print(
        f"sqla_signed_urls signers: {args.rounds} interleaved rounds in {timing_s:.0f} s, "
        f"botocore {botocore.__version__}, oss2 {oss2.__version__}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{'Redis at ' + args.redis_url if args.redis_url else 'in-process Redis'}"
    )
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())

    for urls, session in ((urls_s3, session_s3), (urls_v1, session_v1)):
        session.close()
        urls.uninstall()
        urls.close()
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
