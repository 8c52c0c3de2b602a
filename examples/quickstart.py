"""A short tour on embedded defaults: SQLite, in-process Redis, offline HMAC signing.

Run it with ``python examples/quickstart.py`` (the in-process Redis needs the ``embedded`` extra:
``pip install "sqla-signed-urls[embedded]"``; ``make demo`` runs the larger forum demo).
"""

from __future__ import annotations

import logging

from sqlalchemy import String, create_engine, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqla_signed_urls import ObjectKey, SignedURLs, signals
from sqla_signed_urls.signers import LocalSigner


class Base(DeclarativeBase):
    pass


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
    file_type: Mapped[str] = mapped_column(String(32), default="attachment")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signer = LocalSigner(secret="demo-secret-change-me-0123456789", base_url="/files")
    urls = SignedURLs(signer=signer, redis=None)
    urls.install(Base)
    invalidated: list[str] = []
    signals.url_invalidated.connect(lambda sender, keys: invalidated.extend(keys), weak=False)

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            File(id=i, object_key=f"posts/{i}/photo.jpg", file_type="post_image")
            for i in range(1, 101)
        )
        session.commit()
        files = session.query(File).order_by(File.id).all()

        first = urls.resolve(files)
        again = urls.resolve(files)
        print(f"resolved {len(first)} URLs; second pass identical: {first == again}")
        print(f"file 1 -> {signer.verify(files[0].url)!r} (signature checks out)")
        print(f"redis key file_url:1 has TTL {urls.redis.ttl('file_url:1')} s")

        files[0].object_key = "posts/1/photo-v2.jpg"
        session.commit()
        session.execute(update(File).where(File.id > 95).values(object_key="moved.jpg"))
        session.commit()
        print(f"invalidated after commit: {', '.join(invalidated)}")
        print(f"file 1 now -> {signer.verify(files[0].url)!r}")
    stats = urls.stats.as_dict()
    print(
        f"hits={stats['hits']} misses={stats['misses']} signed={stats['signed']} "
        f"invalidations={stats['invalidations']}"
    )
    urls.close()


if __name__ == "__main__":
    main()
