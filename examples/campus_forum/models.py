"""The campus forum's tables: users with avatars, posts with images and attachments, and one
``files`` table holding every stored object.

``File.object_key`` is an :class:`~sqla_signed_urls.ObjectKey` column, so once
``SignedURLs.install(Base)`` has run, ``file.url`` is a cached signed URL: attachments download
under their original file name, and ``file.thumb_url`` is a 64-pixel-wide variant of an image
(the store resizes it: OSS itself, or the app's own ``/files`` route).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, and_
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sqla_signed_urls import ObjectKey, Variant

#: The values of ``File.file_type``.
FILE_TYPES = ("avatar", "post_image", "attachment")


#: How the ``thumb`` variant asks for a resized image: OSS's own image-processing parameter,
#: which the app's ``/files`` route understands too.
THUMBNAIL = {"x-oss-process": "image/resize,w_64"}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def download_name(file: File) -> str | None:
    """Attachments download under their original name; images are shown."""
    return file.filename if file.file_type == "attachment" else None


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    #: The user's avatar: their one ``File`` of type ``avatar`` (replaced in place).
    avatar: Mapped[File | None] = relationship(
        primaryjoin=lambda: and_(User.id == File.owner_id, File.file_type == "avatar"),
        viewonly=True,
        uselist=False,
    )
    posts: Mapped[list[Post]] = relationship(back_populates="author")


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )

    author: Mapped[User] = relationship(back_populates="posts")
    files: Mapped[list[File]] = relationship(
        back_populates="post", cascade="all, delete-orphan", order_by=lambda: File.id
    )

    @property
    def images(self) -> list[File]:
        return [f for f in self.files if f.file_type == "post_image"]

    @property
    def attachments(self) -> list[File]:
        return [f for f in self.files if f.file_type == "attachment"]


class File(Base):
    """One stored object. ``file.url`` is its signed URL (cached under ``file_url:<id>``),
    ``file.thumb_url`` its thumbnail's (under ``file_url:<id>:thumb``)."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(
        ObjectKey(
            512,
            download_name=download_name,
            content_type="content_type",
            variants={"thumb": Variant(params=THUMBNAIL)},
        )
    )
    file_type: Mapped[str] = mapped_column(String(32), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    post_id: Mapped[int | None] = mapped_column(
        ForeignKey("posts.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )

    owner: Mapped[User] = relationship(foreign_keys=[owner_id])
    post: Mapped[Post | None] = relationship(back_populates="files")
