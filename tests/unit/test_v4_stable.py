"""Stable V4 URLs: processes with cold caches sign byte-identical URLs within one expiry window.

``SignedURLs`` passes the start of the current window as ``signed_at`` to signers that take it
(``S3Signer``, ``OSSSigner`` with V4 credentials). Four separate Python processes, each with its
own in-process Redis and no shared state, read ``file.url`` for one key at different seconds of
one window and must get the same URL; the URL must stay valid until the windowed expiry, never
less than ``url_ttl - cache_ttl`` ahead, also when ``url_ttl`` is the 7-day limit of V4.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import fakeredis
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from sqla_signed_urls import ObjectKey, Settings, SignedURLs
from sqla_signed_urls.signers import OSSSigner, S3Signer, Signer

REPO = Path(__file__).resolve().parents[2]
OBJECT_KEY = "用户/头像/my photo #1.png"
KINDS = ("s3", "s3-minio-token", "oss-v4", "oss-sts-v4")
#: Settings of the two runs: the defaults, and url_ttl at the 7-day limit of V4 URLs with a
#: window that does not divide it (the signing time is then capped by the expiry).
VARIANTS: dict[str, dict[str, int]] = {
    "default": {},
    "seven-days": {"url_ttl": 7 * 24 * 3600, "cache_ttl": 3600, "url_window": 250},
}
PROCESSES = 4


class StableBase(DeclarativeBase):
    pass


class StableFile(StableBase):
    __tablename__ = "stable_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))


def make_signer(kind: str) -> Signer:
    """A fresh signer of ``kind``; every process builds its own."""
    if kind == "s3":
        return S3Signer(
            "campus-forum",
            region="eu-central-1",
            access_key_id="AKIAIOSFODNN7EXAMPLE",
            secret_access_key="stable-v4-s3-secret-0123456789",
        )
    if kind == "s3-minio-token":
        return S3Signer(
            "campus-forum",
            region="us-east-1",
            endpoint_url="http://127.0.0.1:9000",
            access_key_id="AKIAIOSFODNN7EXAMPLE",
            secret_access_key="stable-v4-s3-secret-0123456789",
            session_token="stable/session+token=",
        )
    import oss2

    if kind == "oss-v4":
        auth: Any = oss2.AuthV4("LTAIstable", "stable-v4-oss-secret-0123456789")
    else:
        auth = oss2.StsAuth(
            "STS.stable", "stable-v4-oss-secret-0123456789", "sts/token+=", auth_version="v4"
        )
    endpoint = "https://oss-cn-hangzhou.aliyuncs.com"
    return OSSSigner(oss2.Bucket(auth, endpoint, "campus-forum", region="cn-hangzhou"))


def read_url(kind: str, variant: str, now: int) -> str:
    """``file.url`` of one row, read through a new ``SignedURLs`` with an empty Redis of its
    own, with the library's clock at ``now``."""
    engine = create_engine("sqlite://", poolclass=StaticPool)
    StableBase.metadata.create_all(engine)
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    urls = SignedURLs(make_signer(kind), redis=redis, **VARIANTS[variant])
    urls.install(StableBase)
    try:
        with mock.patch("sqla_signed_urls.core._time", return_value=float(now)):
            with Session(engine) as session:
                session.add(StableFile(id=1, object_key=OBJECT_KEY))
                session.commit()
                url = session.get(StableFile, 1).url  # type: ignore[union-attr]
            assert urls.stats.signed == 1
    finally:
        urls.uninstall()
        urls.close()
        engine.dispose()
    assert isinstance(url, str)
    return url


def child() -> None:
    """Entry point of a child process: ``python -c "...; child()" <now>``; prints its pid and
    the URL of every signer kind and settings variant as JSON."""
    now = int(sys.argv[1])
    urls = {
        f"{kind}/{variant}": read_url(kind, variant, now) for kind in KINDS for variant in VARIANTS
    }
    print(json.dumps({"pid": os.getpid(), "urls": urls}))


def one_window(variant: str, start: int) -> set[int]:
    """The seconds around ``start`` that share its signing window and its expiry window."""
    settings = Settings.merge(**VARIANTS[variant])
    window, ttl = settings.window, settings.url_ttl
    base = start // window * window
    return {
        t
        for t in range(base, base + window)
        if (t // window, (t + ttl) // window) == (start // window, (start + ttl) // window)
    }


def spread(seconds: set[int]) -> list[int]:
    """The first, the second, one in the middle and the last of ``seconds``."""
    ordered = sorted(seconds)
    assert len(ordered) >= PROCESSES
    return [ordered[0], ordered[1], ordered[len(ordered) // 2], ordered[-1]]


def validity(url: str) -> tuple[int, int]:
    """``(signing time, end of validity)`` that a V4 URL carries."""
    query = {name.lower(): values[0] for name, values in parse_qs(urlsplit(url).query).items()}
    stamp = query.get("x-amz-date") or query["x-oss-date"]
    lifetime = int(query.get("x-amz-expires") or query["x-oss-expires"])
    signed = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    start = int(signed.timestamp())
    return start, start + lifetime


# -- the tests --------------------------------------------------------------------------------


def test_four_processes_sign_byte_identical_urls_within_one_window() -> None:
    start = 1_800_000_000  # any time works: nothing compares the URLs with the real clock
    times = spread(one_window("default", start) & one_window("seven-days", start))
    code = "from tests.unit.test_v4_stable import child; child()"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "REDIS_URL")}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(now)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for now in times
    ]
    results = []
    for process in children:
        out, err = process.communicate()
        assert process.returncode == 0, err
        results.append(json.loads(out))
    assert len({result["pid"] for result in results}) == PROCESSES
    first = results[0]["urls"]
    assert set(first) == {f"{kind}/{variant}" for kind in KINDS for variant in VARIANTS}
    for result in results[1:]:
        assert result["urls"] == first
    # What the four processes signed is what this one signs, at any second of the window.
    for name, url in first.items():
        kind, variant = name.split("/")
        assert read_url(kind, variant, times[1]) == url


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", KINDS)
def test_urls_stay_valid_until_the_windowed_expiry(kind: str, variant: str) -> None:
    settings = Settings.merge(**VARIANTS[variant])
    for now in spread(one_window(variant, 1_800_000_123)):
        url = read_url(kind, variant, now)
        signed, valid_until = validity(url)
        expires_at = (now + settings.url_ttl) // settings.window * settings.window
        assert valid_until == expires_at
        assert signed <= now
        assert valid_until - now >= settings.min_validity
        assert valid_until - now > settings.url_ttl - settings.window
        assert valid_until - signed <= 7 * 24 * 3600


@pytest.mark.parametrize("kind", KINDS)
def test_the_next_window_signs_a_new_url(kind: str) -> None:
    window = Settings().window
    now = 1_800_000_000 // window * window
    assert read_url(kind, "default", now) != read_url(kind, "default", now + window)
    assert read_url(kind, "default", now) == read_url(kind, "default", now + 1)


def test_s3_stable_url_is_what_botocore_signs_at_the_window_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    botocore_session = pytest.importorskip("botocore.session")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    from botocore.config import Config

    now = 1_800_000_000
    url = read_url("s3", "default", now)
    signed, valid_until = validity(url)
    client = botocore_session.Session().create_client(
        "s3",
        region_name="eu-central-1",
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="stable-v4-s3-secret-0123456789",
        config=Config(signature_version="s3v4"),
    )
    moment = dt.datetime.fromtimestamp(signed, dt.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        expected = client.generate_presigned_url(
            "get_object",
            Params={"Bucket": "campus-forum", "Key": OBJECT_KEY},
            ExpiresIn=valid_until - signed,
        )
    assert url == expected
