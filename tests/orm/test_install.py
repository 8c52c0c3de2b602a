"""``install()`` and ``uninstall()``: key schemes that collide, namespaces, several
``ObjectKey`` columns on one class, classes mapped later, listeners removed again, a clear error
for objects without a URL attribute, and the specs the operations layer reads.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_signed_urls import ConfigurationError, ObjectKey, SignedURLs
from sqla_signed_urls.testing import FakeSigner

from ..conftest import Base, File, add_files
from ..helpers.read_path import Doc, Photo


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


def test_object_key_column_emits_no_warnings_and_caches_statements() -> None:
    class TBase(DeclarativeBase):
        pass

    class Thing(TBase):
        __tablename__ = "things"
        id: Mapped[int] = mapped_column(primary_key=True)
        key: Mapped[str | None] = mapped_column(ObjectKey(128))
        name: Mapped[str] = mapped_column(String(8))

    from sqlalchemy import create_engine, select

    engine = create_engine("sqlite://")
    TBase.metadata.create_all(engine)
    with engine.connect() as conn:
        for _ in range(2):
            result = conn.execute(select(Thing.key).where(Thing.key == "x"))
            assert result.all() == []
        assert "cached since" in result.context._get_cache_stats()  # type: ignore[attr-defined]
    engine.dispose()


def test_attr_not_installed_gives_clear_error(urls: SignedURLs) -> None:
    class Plain:
        pass

    with pytest.raises(ConfigurationError, match="not a signed-URL attribute"):
        urls.url_for(Plain())


def test_url_spec_and_installed_specs_describe_what_install_attached(make: Any) -> None:
    from sqla_signed_urls import ConfigurationError

    urls = make(FakeSigner())
    spec = urls.url_spec(Doc)
    assert (spec.cls, spec.attr, spec.column, spec.pk_attrs) == (Doc, "url", "object_key", ("id",))
    assert {(s.cls, s.attr) for s in urls.installed_specs()} == {(Doc, "url"), (Photo, "url")}
    with pytest.raises(ConfigurationError, match=r"Doc\.thumbnail is not a signed-URL attribute"):
        urls.url_spec(Doc, "thumbnail")
