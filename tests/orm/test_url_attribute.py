"""The URL attribute through the public API: the first read signs once and caches readable
text, every served URL keeps its minimum validity, a key changed behind the ORM's back is
signed anew, empty keys give ``None``, log lines and signals, and a Redis that cannot be
reached.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from sqlalchemy import text

from sqla_signed_urls import SignedURLs, SigningError
from sqla_signed_urls.testing import FakeSigner

from ..conftest import Base, File, add_files
from .conftest import Recorder


def test_first_read_signs_once_and_caches_readable_text(
    urls: SignedURLs, db: Any, signer: FakeSigner, redis_client: Any, key_prefix: str
) -> None:
    (fid,) = add_files(db, "avatars/7.png")
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        first = file.url
        assert first is not None and first.startswith("https://files.test/avatars/7.png?")
        assert len(signer.calls) == 1
        assert file.url == first
        assert session.get(File, fid).url == first  # type: ignore[union-attr]
    assert len(signer.calls) == 1
    raw = redis_client.get(f"{key_prefix}{fid}")
    assert isinstance(raw, bytes)
    assert first in raw.decode()  # the URL verbatim: no pickle
    assert raw.decode().endswith(" avatars/7.png")  # and the object key it was signed for
    assert not raw.startswith(b"\x80")
    ttl = redis_client.ttl(f"{key_prefix}{fid}")
    # rounding to the URL window (cache_ttl // 10) and jitter (<= 10 %) only shorten it
    assert 2700 * 0.8 - 1 <= ttl <= 2700


def test_ttl_is_cache_ttl_without_window_and_jitter(
    make_urls: Any, db: Any, redis_client: Any, key_prefix: str
) -> None:
    urls = make_urls(local_cache_size=0, url_window=1, ttl_jitter=0.0, cache_ttl=600)
    urls.install(Base)
    (fid,) = add_files(db, "a.png")
    with db() as session:
        assert session.get(File, fid).url  # type: ignore[union-attr]
    assert redis_client.ttl(f"{key_prefix}{fid}") in (599, 600)


def test_every_served_url_keeps_min_validity(
    urls: SignedURLs, db: Any, signer: FakeSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    (fid,) = add_files(db, "a.png")
    start = time.time()
    clock = [start]
    monkeypatch.setattr("sqla_signed_urls.core._time", lambda: clock[0])
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        for step in range(0, 3 * 3600, 300):  # three hours of reads, every five minutes
            clock[0] = start + step
            url = file.url
            assert url is not None
            expires_at = int(url.split("expires=")[1].split("&")[0])
            assert expires_at - clock[0] >= 14400 - 2700
    assert 3 <= len(signer.calls) <= 6  # re-signed about every cache_ttl, not on every read


def test_change_behind_the_orms_back_signs_the_new_key(
    urls: SignedURLs, db: Any, signer: FakeSigner
) -> None:
    (fid,) = add_files(db, "before.png")
    with db() as session:
        assert "before.png" in (session.get(File, fid).url or "")  # type: ignore[union-attr]
    with db() as session:
        session.execute(
            text("UPDATE files SET object_key = 'after.png' WHERE id = :id"), {"id": fid}
        )
        session.commit()
    with db() as session:
        url = session.get(File, fid).url  # type: ignore[union-attr]
    assert url is not None and "after.png" in url
    assert [key for key, _ in signer.calls] == ["before.png", "after.png"]


@pytest.mark.parametrize("value", [None, ""])
def test_empty_object_key_gives_none_without_signing_or_caching(
    urls: SignedURLs, db: Any, signer: FakeSigner, redis_client: Any, key_prefix: str, value: Any
) -> None:
    (fid,) = add_files(db, value)
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        assert file.url is None
        assert urls.resolve([file]) == [None]
    assert signer.calls == []
    assert not redis_client.exists(f"{key_prefix}{fid}")


# -- log lines and signals; no secrets ---------------------------------------------------------


def test_log_lines_name_the_file_and_never_the_url(
    urls: SignedURLs, db: Any, signer: FakeSigner, caplog_all: pytest.LogCaptureFixture
) -> None:
    (fid,) = add_files(db, "logged.png")
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        url = file.url
        file.url  # noqa: B018 - a cached read
    messages = [(r.levelname, r.getMessage()) for r in caplog_all.records]
    assert ("INFO", f"Generating new signed URL for file {fid} (cache miss)") in messages
    assert ("INFO", f"Cached URL for file {fid} for ") in [
        (lvl, msg[: len(f"Cached URL for file {fid} for ")]) for lvl, msg in messages
    ]
    assert ("DEBUG", f"Using cached URL for file {fid}") in messages
    assert url is not None
    for record in caplog_all.records:
        assert url not in record.getMessage()
        assert "sig=" not in record.getMessage()


def test_signing_failure_logs_error_sends_signal_and_returns_none(
    urls: SignedURLs,
    db: Any,
    signer: FakeSigner,
    caplog_all: pytest.LogCaptureFixture,
    recorder: Recorder,
    redis_client: Any,
    key_prefix: str,
) -> None:
    (fid,) = add_files(db, "bad.png")
    signer.fail_with = SigningError("bucket refused the key")
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        assert file.url is None
    errors = [r.getMessage() for r in caplog_all.records if r.levelno == logging.ERROR]
    assert errors == [f"Failed to generate signed URL for file {fid}: bucket refused the key"]
    failed = [(s, kw) for n, s, kw in recorder.sent if n == "sign-failed"]
    assert len(failed) == 1
    assert failed[0][0] is File
    assert failed[0][1]["keys"] == [f"{key_prefix}{fid}"]
    assert isinstance(failed[0][1]["error"], SigningError)
    assert not redis_client.exists(f"{key_prefix}{fid}")


def test_signals_name_class_and_keys(
    urls: SignedURLs, db: Any, recorder: Recorder, key_prefix: str
) -> None:
    (fid,) = add_files(db, "s.png")
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        file.url  # noqa: B018
        file.url  # noqa: B018
    key = f"{key_prefix}{fid}"
    assert recorder.sent == [
        ("cache-miss", File, {"keys": [key]}),
        ("url-signed", File, {"keys": [key]}),
        ("cache-hit", File, {"keys": [key]}),
    ]


# -- Redis unreachable -------------------------------------------------------------------------


def test_unreachable_redis_still_gives_a_url(
    make_urls: Any, db: Any, recorder: Recorder, caplog_all: pytest.LogCaptureFixture
) -> None:
    urls = make_urls(redis="redis://127.0.0.1:1/0")  # constructing does no I/O
    urls.install(Base)
    (fid,) = add_files(db, "down.png")
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        assert "down.png" in (file.url or "")
        assert "down.png" in (urls.resolve([file])[0] or "")
        file.object_key = "down2.png"
        session.commit()  # invalidation cannot reach Redis: no exception either
    errors = [kw["error"] for n, s, kw in recorder.sent if n == "cache-error"]
    assert errors and all(s is urls for n, s, _ in recorder.sent if n == "cache-error")
    warnings = [r for r in caplog_all.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Redis unavailable" in warnings[0].getMessage()
