"""Issue 2 behaviours through the public API: reading, caching, invalidating, logging."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, delete, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_signed_urls import ConfigurationError, ObjectKey, SignedURLs, SigningError, signals
from sqla_signed_urls.testing import FakeSigner

from .conftest import Base, File, add_files, wait_until


class Recorder:
    """Collects blinker signal sends."""

    def __init__(self, *sigs: Any) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []
        for sig in sigs:
            sig.connect(self._receiver(sig.name), weak=False)
        self._sigs = sigs

    def _receiver(self, name: str) -> Any:
        def receive(sender: Any, **kwargs: Any) -> None:
            self.sent.append((name, sender, kwargs))

        self._handlers = getattr(self, "_handlers", [])
        self._handlers.append(receive)
        return receive

    def names(self) -> list[str]:
        return [name for name, _, _ in self.sent]

    def disconnect(self) -> None:
        for sig in self._sigs:
            for handler in self._handlers:
                sig.disconnect(handler)


@pytest.fixture
def recorder() -> Any:
    rec = Recorder(
        signals.cache_hit,
        signals.cache_miss,
        signals.url_signed,
        signals.url_invalidated,
        signals.sign_failed,
        signals.cache_error,
    )
    yield rec
    rec.disconnect()


# 1. sign once, cache under <prefix><pk> with a TTL of cache_ttl, readable text


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


# 2. minimum validity; TTL configuration errors


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


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"cache_ttl": 14400, "url_ttl": 14400}, "cache_ttl=14400 must be shorter"),
        ({"cache_ttl": 20000, "url_ttl": 14400}, "must be shorter than url_ttl"),
        ({"cache_ttl": 0}, "must be positive"),
        ({"url_ttl": -5}, "must be positive"),
        ({"cache_ttl": "2700"}, "cache_ttl='2700'"),
    ],
)
def test_bad_ttls_raise_at_construction(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        SignedURLs(FakeSigner(), redis="redis://127.0.0.1:1/0", **kwargs)


def test_url_ttl_beyond_signer_limit_raises() -> None:
    import oss2

    from sqla_signed_urls.signers import OSSSigner

    bucket = oss2.Bucket(
        oss2.AuthV4("id", "secret"),
        "https://oss-cn-hangzhou.aliyuncs.com",
        "campus-forum",
        region="cn-hangzhou",
    )
    with pytest.raises(ConfigurationError, match="url_ttl=700000"):
        SignedURLs(OSSSigner(bucket), redis="redis://127.0.0.1:1/0", url_ttl=700_000)
    SignedURLs(OSSSigner(bucket), redis="redis://127.0.0.1:1/0", url_ttl=7 * 24 * 3600)


# 3. invalidation after commit


def test_commit_of_new_key_invalidates_and_next_read_signs_new_key(
    urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str, recorder: Recorder
) -> None:
    (fid,) = add_files(db, "old.png")
    key = f"{key_prefix}{fid}"
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        assert "old.png" in (file.url or "")
        assert redis_client.exists(key)
        file.object_key = "new.png"
        session.flush()
        assert redis_client.exists(key), "invalidated during flush, before commit"
        session.commit()
        assert not redis_client.exists(key)
        invalidated = [(s, kw) for n, s, kw in recorder.sent if n == "url-invalidated"]
        assert invalidated == [(File, {"keys": [key]})]
        assert "new.png" in (file.url or "")


def test_delete_invalidates(
    urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str, recorder: Recorder
) -> None:
    (fid,) = add_files(db, "gone.png")
    with db() as session:
        file = session.get(File, fid)
        assert file is not None and file.url
        session.delete(file)
        session.commit()
    assert not redis_client.exists(f"{key_prefix}{fid}")
    assert recorder.names().count("url-invalidated") == 1


def test_other_columns_invalidate_nothing(
    urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str, recorder: Recorder
) -> None:
    (fid,) = add_files(db, "a.png")
    with db() as session:
        file = session.get(File, fid)
        assert file is not None and file.url
        file.file_type = "avatar"
        session.commit()
        file.object_key = "a.png"  # same value: no change
        session.commit()
    assert redis_client.exists(f"{key_prefix}{fid}")
    assert "url-invalidated" not in recorder.names()


def test_rollback_invalidates_nothing(
    urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str, recorder: Recorder
) -> None:
    (fid,) = add_files(db, "keep.png")
    with db() as session:
        file = session.get(File, fid)
        assert file is not None
        url = file.url
        file.object_key = "other.png"
        session.flush()
        session.rollback()
        assert redis_client.exists(f"{key_prefix}{fid}")
        assert session.get(File, fid).url == url  # type: ignore[union-attr]
        session.commit()  # nothing pending survives the rollback
    assert "url-invalidated" not in recorder.names()


def test_nested_transaction_waits_for_outermost_commit(
    urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str, recorder: Recorder
) -> None:
    (fid,) = add_files(db, "n.png")
    key = f"{key_prefix}{fid}"
    with db() as session:
        file = session.get(File, fid)
        assert file is not None and file.url
        with session.begin_nested():
            file.object_key = "n2.png"
        assert redis_client.exists(key)
        assert "url-invalidated" not in recorder.names()
        session.commit()
    assert not redis_client.exists(key)
    assert recorder.names().count("url-invalidated") == 1


# 4. ORM bulk statements


def test_bulk_update_and_delete_invalidate_touched_rows_after_commit(
    urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str, recorder: Recorder
) -> None:
    ids = add_files(db, "1.png", "2.png", "3.png", "4.png")
    with db() as session:
        files = session.query(File).order_by(File.id).all()
        urls.resolve(files)
        assert all(redis_client.exists(f"{key_prefix}{i}") for i in ids)

        session.execute(update(File).where(File.id.in_(ids[:2])).values(object_key="moved.png"))
        assert redis_client.exists(f"{key_prefix}{ids[0]}")
        session.commit()
        assert not redis_client.exists(f"{key_prefix}{ids[0]}")
        assert not redis_client.exists(f"{key_prefix}{ids[1]}")
        assert redis_client.exists(f"{key_prefix}{ids[2]}")

        session.execute(delete(File).where(File.id == ids[2]))
        session.commit()
        assert not redis_client.exists(f"{key_prefix}{ids[2]}")
        assert redis_client.exists(f"{key_prefix}{ids[3]}")

        session.execute(update(File).where(File.id == ids[3]).values(file_type="avatar"))
        session.commit()
        assert redis_client.exists(f"{key_prefix}{ids[3]}")
    sent = [kw["keys"] for n, _, kw in recorder.sent if n == "url-invalidated"]
    assert sent == [
        sorted([f"{key_prefix}{ids[0]}", f"{key_prefix}{ids[1]}"]),
        [f"{key_prefix}{ids[2]}"],
    ]


def test_bulk_update_by_primary_key_invalidates(
    urls: SignedURLs, db: Any, redis_client: Any, key_prefix: str
) -> None:
    ids = add_files(db, "1.png", "2.png", "3.png")
    with db() as session:
        urls.resolve(session.query(File).all())
        session.execute(
            update(File),
            [{"id": ids[0], "object_key": "x.png"}, {"id": ids[1], "object_key": "y.png"}],
        )
        session.rollback()
        assert redis_client.exists(f"{key_prefix}{ids[0]}")
        session.execute(
            update(File),
            [{"id": ids[0], "object_key": "x.png"}, {"id": ids[1], "object_key": "y.png"}],
        )
        session.commit()
    assert not redis_client.exists(f"{key_prefix}{ids[0]}")
    assert not redis_client.exists(f"{key_prefix}{ids[1]}")
    assert redis_client.exists(f"{key_prefix}{ids[2]}")
    with db() as session:
        assert "x.png" in (session.get(File, ids[0]).url or "")  # type: ignore[union-attr]


# 5. fingerprint: a value for another object key is never served


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


# 6. empty keys


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


# 7. key collisions and several URL columns


def test_two_models_sharing_key_scheme_raise_naming_both(make_urls: Any) -> None:
    class OtherBase(DeclarativeBase):
        pass

    class Avatar(OtherBase):
        __tablename__ = "avatars"
        id: Mapped[int] = mapped_column(primary_key=True)
        key: Mapped[str | None] = mapped_column(ObjectKey(255))

    class Attachment(OtherBase):
        __tablename__ = "attachments"
        id: Mapped[int] = mapped_column(primary_key=True)
        key: Mapped[str | None] = mapped_column(ObjectKey(255))

    urls = make_urls()
    with pytest.raises(ConfigurationError, match=r"Attachment\.url and Avatar\.url"):
        urls.install(OtherBase)


def test_collision_detected_when_mappers_configure(make_urls: Any) -> None:
    from sqlalchemy.orm import configure_mappers, registry

    reg = registry()
    urls = make_urls()
    urls.install(reg)

    @reg.mapped_as_dataclass
    class Photo:
        __tablename__ = "photos"
        id: Mapped[int] = mapped_column(primary_key=True)
        key: Mapped[str | None] = mapped_column(ObjectKey(255))

    @reg.mapped_as_dataclass
    class Scan:
        __tablename__ = "scans"
        id: Mapped[int] = mapped_column(primary_key=True)
        key: Mapped[str | None] = mapped_column(ObjectKey(255))

    with pytest.raises(ConfigurationError, match=r"Photo\.url and Scan\.url"):
        configure_mappers()
    urls.uninstall()
    reg.dispose()


def test_namespace_gives_a_model_its_own_keys(
    make_urls: Any, engine: Any, redis_client: Any, key_prefix: str
) -> None:
    class NsBase(DeclarativeBase):
        pass

    class Doc(NsBase):
        __tablename__ = "ns_docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        key: Mapped[str | None] = mapped_column(ObjectKey(255))
        thumb: Mapped[str | None] = mapped_column(ObjectKey(255, url_attr="thumb_url"))

    class Pic(NsBase):
        __tablename__ = "ns_pics"
        id: Mapped[int] = mapped_column(primary_key=True)
        key: Mapped[str | None] = mapped_column(ObjectKey(255, namespace="pic"))
        owner_id: Mapped[int | None] = mapped_column(ForeignKey("ns_docs.id"))

    urls = make_urls(local_cache_size=0)
    urls.install(NsBase)
    NsBase.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            doc, pic = Doc(id=1, key="d.pdf", thumb="d.jpg"), Pic(id=1, key="p.png")
            session.add_all([doc, pic])
            session.commit()
            assert "d.pdf" in (doc.url or "")
            assert "d.jpg" in (doc.thumb_url or "")
            assert "p.png" in (pic.url or "")
        assert redis_client.exists(f"{key_prefix}1")
        assert redis_client.exists(f"{key_prefix}thumb_url:1")
        assert redis_client.exists(f"{key_prefix}pic:1")
    finally:
        NsBase.metadata.drop_all(engine)


def test_two_object_keys_on_one_class_need_distinct_url_attrs(make_urls: Any) -> None:
    class DupBase(DeclarativeBase):
        pass

    class Twice(DupBase):
        __tablename__ = "twice"
        id: Mapped[int] = mapped_column(primary_key=True)
        a: Mapped[str | None] = mapped_column(ObjectKey(255))
        b: Mapped[str | None] = mapped_column(ObjectKey(255))

    with pytest.raises(ConfigurationError, match="both use url_attr='url'"):
        make_urls().install(DupBase)


def test_install_twice_raises_and_url_is_read_only(urls: SignedURLs, db: Any) -> None:
    with pytest.raises(ConfigurationError, match="already installed"):
        urls.install(Base)
    (fid,) = add_files(db, "a.png")
    with db() as session:
        file = session.get(File, fid)
        with pytest.raises(AttributeError, match="read-only"):
            file.url = "x"  # type: ignore[misc,union-attr]


def test_install_on_one_class_and_on_classes_mapped_later(
    make_urls: Any, engine: Any, signer: FakeSigner
) -> None:
    class LateBase(DeclarativeBase):
        pass

    urls = make_urls(local_cache_size=0)
    urls.install(LateBase)

    class Late(LateBase):  # mapped after install()
        __tablename__ = "late"
        id: Mapped[int] = mapped_column(primary_key=True)
        key: Mapped[str | None] = mapped_column(ObjectKey(64))
        name: Mapped[str] = mapped_column(String(10), default="x")

    late = Late(id=5, key="late.png")
    assert "late.png" in (late.url or "")
    urls.uninstall(LateBase)
    assert not hasattr(Late, "url")


def test_uninstall_removes_listeners(make_urls: Any, db: Any, redis_client: Any) -> None:
    urls = make_urls(local_cache_size=0)
    urls.install(File)
    (fid,) = add_files(db, "a.png")
    urls.uninstall(File)
    assert not hasattr(File, "url")
    with db() as session:
        file = session.get(File, fid)
        file.object_key = "b.png"  # type: ignore[union-attr]
        session.commit()  # no listener left to fail or fire


# 8. logging in the seed's words; no secrets


def test_log_lines_in_the_seeds_words(
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


# 9. Redis unreachable


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


# 10. awkward object keys round-trip


AWKWARD_KEYS = [
    "with space.png",
    "a+b.png",
    "100%.png",
    "hash#tag.png",
    "what?.png",
    "中文/文件 名.jpg",
    "deep/nested/path/to/file.tar.gz",
    "emoji-😀.png",
]


@pytest.mark.parametrize("object_key", AWKWARD_KEYS)
def test_awkward_keys_round_trip_local_signer(object_key: str) -> None:
    from sqla_signed_urls.signers import LocalSigner

    signer = LocalSigner("s" * 32, "https://forum.test/files")
    url = signer.sign(object_key, expires_at=int(time.time()) + 60)
    assert signer.verify(url) == object_key


@pytest.mark.parametrize("object_key", AWKWARD_KEYS)
def test_awkward_keys_round_trip_oss_signer(object_key: str) -> None:
    from urllib.parse import unquote, urlsplit

    import oss2

    from sqla_signed_urls.signers import OSSSigner

    bucket = oss2.Bucket(
        oss2.Auth("id", "secret"), "https://oss-cn-hangzhou.aliyuncs.com", "campus-forum"
    )
    url = OSSSigner(bucket).sign(object_key, expires_at=int(time.time()) + 3600)
    parts = urlsplit(url)
    assert parts.netloc == "campus-forum.oss-cn-hangzhou.aliyuncs.com"
    assert unquote(parts.path[1:]) == object_key


def test_awkward_keys_through_the_model(urls: SignedURLs, db: Any) -> None:
    from urllib.parse import unquote, urlsplit

    ids = add_files(db, *AWKWARD_KEYS)
    with db() as session:
        files = [session.get(File, i) for i in ids]
        for file, expected in zip(files, AWKWARD_KEYS, strict=True):
            assert file is not None and file.url is not None
            assert unquote(urlsplit(file.url).path[1:]) == expected
        assert urls.resolve(files) == [f.url for f in files if f is not None]


# 11. redis URLs


def test_redis_db_index_is_honoured(real_redis_url: str, db: Any, key_prefix: str) -> None:
    import redis

    base = real_redis_url.rsplit("/", 1)[0]
    urls = SignedURLs(FakeSigner(), redis=f"{base}/2", key_prefix=key_prefix, local_cache_size=0)
    urls.install(Base)
    try:
        (fid,) = add_files(db, "db2.png")
        with db() as session:
            assert session.get(File, fid).url  # type: ignore[union-attr]
        db2 = redis.Redis.from_url(f"{base}/2")
        try:
            key = f"{key_prefix}{fid}"
            assert db2.exists(key)
            assert db2.get(key).endswith(b" db2.png")
            db2.unlink(key)
        finally:
            db2.close()
    finally:
        urls.uninstall()
        urls.close()


def test_close_closes_the_connections_of_a_client_it_built_and_leaves_a_passed_one_open(
    real_redis_url: str, db: Any, key_prefix: str
) -> None:
    """Connections seen from the server (CLIENT LIST, by a client name of this test's own)."""
    import uuid

    import redis

    name = f"close-test-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(real_redis_url)

    def connections() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") == name)

    sep = "&" if "?" in real_redis_url else "?"
    built = SignedURLs(
        FakeSigner(), redis=f"{real_redis_url}{sep}client_name={name}", key_prefix=key_prefix
    )
    passed = redis.Redis.from_url(real_redis_url, client_name=name)
    given = SignedURLs(FakeSigner(), redis=passed, key_prefix=key_prefix)
    try:
        built.install(Base)
        (fid,) = add_files(db, "close.png")
        with db() as session:
            assert built.url_for(session.get(File, fid))  # a connection, and the listener's
        assert given.redis.ping()
        assert connections() >= 3
        built.uninstall()
        built.close()
        wait_until(lambda: connections() == 1, "the built client's connections to close")
        given.close()
        time.sleep(0.2)
        assert connections() == 1, "close() closed a client the caller passed in"
        assert passed.ping()
    finally:
        passed.close()
        admin.close()


def test_db_index_parsed_from_url_without_io() -> None:
    urls = SignedURLs(FakeSigner(), redis="redis://:pw@127.0.0.1:6390/2")
    assert urls.redis.connection_pool.connection_kwargs["db"] == 2
    assert "pw" not in repr(urls)


@pytest.mark.parametrize("url", ["http://localhost:6379/0", "memcached://x", "localhost:6379"])
def test_unsupported_scheme_names_the_setting(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"SignedURLs\(redis=...\): unsupported"):
        SignedURLs(FakeSigner(), redis=url)


def test_unsupported_scheme_from_env_names_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://localhost")
    with pytest.raises(ConfigurationError, match="REDIS_URL: unsupported"):
        SignedURLs(FakeSigner())


def test_no_redis_url_uses_embedded_redis_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog_all: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    urls = SignedURLs(FakeSigner())
    warnings = [r.getMessage() for r in caplog_all.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "local to this process" in warnings[0]
    assert urls.redis.ping()


def test_real_servers_end_to_end(
    real_redis_url: str, real_database_url: str, db: Any, key_prefix: str
) -> None:
    """The whole flow on PostgreSQL and a real Redis (CI sets both URLs)."""
    import redis

    urls = SignedURLs(FakeSigner(), redis=real_redis_url, key_prefix=key_prefix)
    urls.install(Base)
    client = redis.Redis.from_url(real_redis_url)
    try:
        (fid,) = add_files(db, "pg.png")
        with db() as session:
            file = session.get(File, fid)
            assert file is not None and "pg.png" in (file.url or "")
            assert client.ttl(f"{key_prefix}{fid}") > 0
            file.object_key = "pg2.png"
            session.commit()
            assert not client.exists(f"{key_prefix}{fid}")
            assert "pg2.png" in (file.url or "")
        assert str(db.kw["bind"].url).startswith("postgresql")
    finally:
        client.close()
        urls.uninstall()
        urls.close()
