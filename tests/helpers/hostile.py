"""Models, secrets and signers shared by the hostile-input tests: hostile cached values
(``tests/orm``), object keys, cache keys and secrets in settings (``tests/unit``), and AUTH
against real servers (``tests/servers``).
"""

from __future__ import annotations

import traceback
import uuid
from urllib.parse import unquote, urlsplit

import oss2
from hypothesis import HealthCheck, settings
from sqlalchemy import String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_signed_urls.signers import LocalSigner, OSSSigner
from sqla_signed_urls.types import ObjectKey

HYPOTHESIS = settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LOCAL_SECRET = "hostile-input-local-secret-0123456789"
OSS_SECRET = "hostile-input-oss-secret-abcdef"
PREFIX = "hostile:"
VICTIM_KEY = "victim/photo.png"
OTHER_KEY = "other/private-scan.pdf"
REDIS_PASSWORD = "hostile-Redis-pw-7f3a9c"


class HostileBase(DeclarativeBase):
    pass


class HostileFile(HostileBase):
    __tablename__ = "hostile_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(2048))


class StrFile(HostileBase):
    __tablename__ = "hostile_str_files"
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512, namespace="s"))


class UUIDFile(HostileBase):
    __tablename__ = "hostile_uuid_files"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512, namespace="u"))


class PairFile(HostileBase):
    __tablename__ = "hostile_pair_files"
    owner: Mapped[str] = mapped_column(String(300), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    object_key: Mapped[str | None] = mapped_column(ObjectKey(512, namespace="p"))


def key_of(url: str | None) -> str:
    """The object key a FakeSigner URL points at."""
    assert url is not None
    parts = urlsplit(url)
    assert parts.netloc == "files.test" and parts.query.endswith("&sig=fake")
    return unquote(parts.path[1:], errors="strict")


def local_signer() -> LocalSigner:
    return LocalSigner(LOCAL_SECRET, "https://forum.test/files")


def oss_signer() -> OSSSigner:
    bucket = oss2.Bucket(
        oss2.Auth("hostile-input-key-id", OSS_SECRET),
        "https://oss-cn-hangzhou.aliyuncs.com",
        "campus-forum",
    )
    return OSSSigner(bucket)


def all_text_of(exc: BaseException) -> str:
    """Everything a traceback or log line could show of ``exc``, its chain included."""
    return "".join(traceback.format_exception(exc)) + repr(exc)
