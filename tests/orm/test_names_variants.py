"""Download names and image variants: ``ObjectKey(download_name=..., content_type=...,
variants=...)``. The URLs carry what they should (signed), are cached under their own keys,
checked against what they were made for, invalidated together, and covered by
``CacheService``; on the conftest database and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import Engine, String, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_signed_urls import (
    CacheService,
    ConfigurationError,
    ObjectKey,
    SignedURLs,
    Variant,
    signals,
)
from sqla_signed_urls.signers import LocalSigner
from sqla_signed_urls.testing import CountingRedis

from ..conftest import wait_until

SECRET = "names-and-variants-secret-0123456789"


class NBase(DeclarativeBase):
    pass


class Doc(NBase):
    __tablename__ = "nv_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(
        ObjectKey(
            300,
            download_name="filename",
            content_type="mime",
            variants={
                "thumb": Variant(params={"x-oss-process": "image/resize,w_128"}),
                "small": Variant(key=lambda key: f"thumbs/{key}"),
            },
        )
    )
    filename: Mapped[str] = mapped_column(String(200))
    mime: Mapped[str | None] = mapped_column(String(100))


class Shown(NBase):
    """A download name from a callable, shown inline."""

    __tablename__ = "nv_shown"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(
        ObjectKey(
            300,
            namespace="shown",
            download_name=lambda row: f"report-{row.id}.pdf",
            disposition="inline",
        )
    )


@pytest.fixture
def db(engine: Engine) -> Iterator[sessionmaker[Session]]:
    NBase.metadata.create_all(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    NBase.metadata.drop_all(engine)


@pytest.fixture
def signer() -> LocalSigner:  # type: ignore[override]
    return LocalSigner(SECRET, base_url="https://files.test/files")


@pytest.fixture
def urls(make_urls: Any, signer: LocalSigner) -> SignedURLs:
    made: SignedURLs = make_urls(signer=signer)
    made.install(NBase)
    made.channel.ensure_started()
    wait_until(lambda: made.channel.live, "the invalidation listener")
    return made


def add_doc(db: sessionmaker[Session], key: str, filename: str, mime: str | None = None) -> int:
    with db() as session:
        doc = Doc(object_key=key, filename=filename, mime=mime)
        session.add(doc)
        session.commit()
        return doc.id


def params(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_the_url_downloads_under_the_file_name(
    urls: SignedURLs, db: sessionmaker[Session], signer: LocalSigner
) -> None:
    plain = add_doc(db, "docs/a1.pdf", "Quarterly report.pdf", "application/pdf")
    unicode = add_doc(db, "docs/a2.pdf", 'Отчёт 2024 "final".pdf')
    with db() as session:
        first, second = session.get(Doc, plain), session.get(Doc, unicode)
        assert first is not None and second is not None
        found = signer.verified(first.url or "")
        assert found.object_key == "docs/a1.pdf"
        assert found.params == {
            "response-content-disposition": 'attachment; filename="Quarterly report.pdf"',
            "response-content-type": "application/pdf",
        }
        header = signer.verified(second.url or "").params["response-content-disposition"]
        assert header == (
            'attachment; filename="_____ 2024 _final_.pdf"; filename*=UTF-8'
            "''%D0%9E%D1%82%D1%87%D1%91%D1%82%202024%20%22final%22.pdf"
        )
        assert "response-content-type" not in params(second.url or "")  # no type stored


def test_a_callable_name_and_inline_disposition(
    urls: SignedURLs, db: sessionmaker[Session]
) -> None:
    with db() as session:
        shown = Shown(object_key="reports/9.pdf")
        session.add(shown)
        session.commit()
        assert params(shown.url or "")["response-content-disposition"] == (
            f'inline; filename="report-{shown.id}.pdf"'
        )


def test_renaming_invalidates_and_a_value_for_another_name_is_a_miss(
    urls: SignedURLs, db: sessionmaker[Session], redis_client: CountingRedis, key_prefix: str
) -> None:
    doc_id = add_doc(db, "docs/b.pdf", "old name.pdf")
    with db() as session:
        doc = session.get(Doc, doc_id)
        assert doc is not None
        old_url = doc.url or ""
        assert redis_client._client.exists(f"{key_prefix}{doc_id}")
        invalidated: list[str] = []

        def receive(sender: Any, **kwargs: Any) -> None:
            invalidated.extend(kwargs["keys"])

        with signals.url_invalidated.connected_to(receive):
            doc.filename = "new name.pdf"
            session.commit()
        assert f"{key_prefix}{doc_id}" in invalidated  # the rename invalidated it
        assert not redis_client._client.exists(f"{key_prefix}{doc_id}")
        assert 'filename="new name.pdf"' in params(doc.url or "")["response-content-disposition"]

    # Another process renames the row behind the cache's back (no ORM event): the value
    # cached for the old name is never served for the new one.
    with db() as session:
        doc = session.get(Doc, doc_id)
        assert doc is not None
        cached_url = doc.url or ""
    with db() as session:
        session.execute(
            text("UPDATE nv_docs SET filename = 'third.pdf' WHERE id = :i"), {"i": doc_id}
        )
        session.commit()
    urls.clear_local()
    with db() as session:
        doc = session.get(Doc, doc_id)
        assert doc is not None
        fresh = doc.url or ""
    assert fresh not in (cached_url, old_url)
    assert 'filename="third.pdf"' in params(fresh)["response-content-disposition"]


def test_variants_have_their_own_keys_and_urls(
    urls: SignedURLs,
    db: sessionmaker[Session],
    redis_client: CountingRedis,
    key_prefix: str,
    signer: LocalSigner,
) -> None:
    doc_id = add_doc(db, "images/cat.png", "cat.png", "image/png")
    with db() as session:
        doc = session.get(Doc, doc_id)
        assert doc is not None
        thumb = signer.verified(doc.thumb_url or "")  # type: ignore[attr-defined]
        assert thumb.object_key == "images/cat.png"
        assert thumb.params == {"x-oss-process": "image/resize,w_128"}  # no download name
        small = signer.verified(doc.small_url or "")  # type: ignore[attr-defined]
        assert small.object_key == "thumbs/images/cat.png"
        assert urls.url_for(doc, variant="thumb") == doc.thumb_url  # type: ignore[attr-defined]
        assert urls.resolve([doc], variant="small") == [doc.small_url]  # type: ignore[attr-defined]
        assert urls.cache_key(doc, "thumb_url") == f"{key_prefix}{doc_id}:thumb"
        assert signer.verified(doc.url or "").object_key == "images/cat.png"
        for suffix in ("", ":thumb", ":small"):
            assert redis_client._client.exists(f"{key_prefix}{doc_id}{suffix}")
        with pytest.raises(ConfigurationError, match=r"no variant 'huge'.*small, thumb"):
            urls.url_for(doc, variant="huge")


def test_a_changed_key_invalidates_every_variant_in_one_unlink_and_publish(
    urls: SignedURLs, db: sessionmaker[Session], redis_client: CountingRedis, key_prefix: str
) -> None:
    doc_id = add_doc(db, "images/dog.png", "dog.png")
    with db() as session:
        doc = session.get(Doc, doc_id)
        assert doc is not None
        old = (doc.url, doc.thumb_url, doc.small_url)  # type: ignore[attr-defined]
        doc.object_key = "images/dog-2.png"
        redis_client.reset()
        session.commit()
        assert redis_client.commands["PIPELINE"] == 1  # UNLINK and PUBLISH together
        for suffix in ("", ":thumb", ":small"):
            assert not redis_client._client.exists(f"{key_prefix}{doc_id}{suffix}")
        new = (doc.url, doc.thumb_url, doc.small_url)  # type: ignore[attr-defined]
        assert all(a != b for a, b in zip(old, new, strict=True))
        assert "thumbs/images/dog-2.png" in (new[2] or "")

    with db() as session:  # ORM bulk UPDATE of the name column invalidates too
        redis_client.reset()
        session.execute(update(Doc).where(Doc.id == doc_id).values(filename="renamed.png"))
        session.commit()
        assert not redis_client._client.exists(f"{key_prefix}{doc_id}")


def test_prefetch_reads_variants_in_the_same_round_trip(
    urls: SignedURLs, db: sessionmaker[Session], redis_client: CountingRedis
) -> None:
    ids = [add_doc(db, f"images/{i}.png", f"{i}.png") for i in range(6)]
    with db() as session:
        redis_client.reset()
        stmt = select(Doc).options(urls.prefetch("url", "thumb_url", "small_url"))
        docs = session.scalars(stmt).all()
        assert redis_client.commands["MGET"] == 1
        redis_client.reset()
        urls_read = [(d.url, d.thumb_url, d.small_url) for d in docs]  # type: ignore[attr-defined]
        assert redis_client.round_trips == 0
        assert len(urls_read) == len(ids)


def test_cache_service_clears_warms_and_refreshes_variants(
    urls: SignedURLs,
    db: sessionmaker[Session],
    redis_client: CountingRedis,
    key_prefix: str,
    signer: LocalSigner,
) -> None:
    service = CacheService(urls, session_factory=db, model=Doc)
    doc_id = add_doc(db, "images/owl.png", "owl.png", "image/png")
    keys = [f"{key_prefix}{doc_id}{suffix}" for suffix in ("", ":thumb", ":small")]

    assert service.warm_file_url_cache() == 3  # the URL and both variants
    assert all(redis_client._client.exists(k) for k in keys)
    with db() as session:
        doc = session.get(Doc, doc_id)
        assert doc is not None
        assert signer.verified(doc.url or "").params["response-content-disposition"]
        urls.clear_local()
        assert redis_client._client.exists(keys[1])
        assert signer.verified(doc.thumb_url or "").params == {  # type: ignore[attr-defined]
            "x-oss-process": "image/resize,w_128"
        }

    refreshed = service.refresh_expired_urls(within=10**6)
    assert refreshed == 3
    with db() as session:
        doc = session.get(Doc, doc_id)
        assert doc is not None
        urls.clear_local()
        assert signer.verified(doc.small_url or "").object_key == "thumbs/images/owl.png"  # type: ignore[attr-defined]

    assert service.clear_file_url_cache(file_id=doc_id) == 3
    assert not any(redis_client._client.exists(k) for k in keys)


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of params"):
        Variant()
    with pytest.raises(ConfigurationError, match="exactly one of params"):
        Variant(params={"a": "b"}, key=str)
    with pytest.raises(ConfigurationError, match="download_name="):
        ObjectKey(10, download_name="not an attribute")
    with pytest.raises(ConfigurationError, match="disposition="):
        ObjectKey(10, disposition="download")
    with pytest.raises(ConfigurationError, match="expected a Variant"):
        ObjectKey(10, variants={"thumb": {"w": "1"}})  # type: ignore[dict-item]
