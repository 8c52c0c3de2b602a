"""CI: the package installed without extras (``pip install .``) works against a real Redis.

Run with the python of a fresh virtualenv holding only ``pip install .``::

    REDIS_URL=redis://127.0.0.1:6379/15 /tmp/venv/bin/python .ci/no_extras_check.py

It checks that no optional driver came along, that ``ObjectKey``, ``SignedURLs(LocalSigner(...),
redis=...)``, ``install(Base)`` and ``file.url`` work (the URL is cached in Redis and dropped
after a commit changes the key), that ``OSSSigner`` and the console script name the extra they
need, and removes every key it wrote. Prints one summary line (``no-extras: 4 passed, 0 failed``),
each failure on stderr before it; exits 1 on any failure.
"""

# No `from __future__ import annotations`: the models below are declared inside a function, so
# SQLAlchemy needs their annotations evaluated where they are written.
import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
OPTIONAL = ("oss2", "click", "rich", "fakeredis", "flask", "prometheus_client", "alembic")


class CheckFailed(Exception):
    """One check found the install wrong."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def no_optional_driver() -> str:
    present = [name for name in OPTIONAL if importlib.util.find_spec(name) is not None]
    expect(not present, f"pip install . brought optional packages: {', '.join(present)}")
    import sqla_signed_urls

    where = Path(sqla_signed_urls.__file__).resolve()
    expect(Path(sys.prefix).resolve() in where.parents, f"imported from {where}, not the venv")
    return "no optional driver installed"


def url_through_real_redis() -> str:
    import redis
    from sqlalchemy import String, create_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    from sqla_signed_urls import ObjectKey, SignedURLs
    from sqla_signed_urls.signers import LocalSigner

    class Base(DeclarativeBase):
        pass

    class File(Base):
        __tablename__ = "files"
        id: Mapped[int] = mapped_column(primary_key=True)
        object_key: Mapped[str | None] = mapped_column(ObjectKey(512))
        file_type: Mapped[str] = mapped_column(String(32), default="attachment")

    prefix = f"ci-no-extras:{uuid.uuid4().hex[:12]}:file_url:"
    raw: Any = redis.Redis.from_url(REDIS_URL)
    signer = LocalSigner("ci-secret-" + uuid.uuid4().hex, base_url="/files")
    urls = SignedURLs(signer, redis=REDIS_URL, key_prefix=prefix)
    try:
        urls.install(Base)
        engine = create_engine("sqlite://")
        Base.metadata.create_all(engine)
        with Session(engine, expire_on_commit=False) as session:
            session.add(File(id=1, object_key="posts/1/photo.jpg"))
            session.commit()
            file = session.get(File, 1)
            if file is None:
                raise CheckFailed("the row just committed is missing")
            first = file.url  # type: ignore[attr-defined]
            expect(signer.verify(first) == "posts/1/photo.jpg", "the URL does not verify")
            cached = raw.get(prefix + "1")
            expect(cached is not None, f"no {prefix}1 in Redis after file.url")
            again = file.url  # type: ignore[attr-defined]
            expect(again == first, "a second read gave another URL")
            file.object_key = "posts/1/photo-v2.jpg"
            session.commit()
            expect(raw.get(prefix + "1") is None, "the commit did not drop the cached URL")
            renewed = file.url  # type: ignore[attr-defined]
            expect(signer.verify(renewed) == "posts/1/photo-v2.jpg", "stale URL after the commit")
        engine.dispose()
    finally:
        urls.uninstall()
        urls.close()
        keys = list(raw.scan_iter(match=prefix + "*", count=1000))
        if keys:
            raw.unlink(*keys)
        left = list(raw.scan_iter(match=prefix + "*", count=1000))
        raw.close()
    expect(not left, f"keys left under {prefix}: {left[:3]}")
    return f"file.url cached in Redis {REDIS_URL.rsplit('@', 1)[-1]} and invalidated"


def oss_signer_names_its_extra() -> str:
    from sqla_signed_urls import ConfigurationError
    from sqla_signed_urls.signers import OSSSigner

    bucket = type("Bucket", (), {"sign_url": None, "bucket_name": "b", "auth": None})()
    try:
        OSSSigner(bucket)
    except ConfigurationError as exc:
        message = str(exc)
    else:
        message = "OSSSigner(...) did not raise ConfigurationError without oss2"
    expect('pip install "sqla-signed-urls[oss]"' in message, message)
    return "OSSSigner names sqla-signed-urls[oss]"


def console_script_names_its_extra() -> str:
    script = Path(sys.executable).with_name("sqla-signed-urls")
    expect(script.exists(), f"{script} was not installed")
    done = subprocess.run(  # noqa: S603 - our own console script
        [str(script), "stats"], capture_output=True, text=True, check=False
    )
    lines = done.stderr.strip().splitlines()
    expect(done.returncode == 2, f"exit status {done.returncode}: {done.stderr.strip()}")
    expect(
        len(lines) == 1 and 'pip install "sqla-signed-urls[cli]"' in lines[0],
        f"expected one line naming the cli extra, got {done.stderr.strip()!r}",
    )
    return "sqla-signed-urls names sqla-signed-urls[cli]"


CHECKS: tuple[Callable[[], str], ...] = (
    no_optional_driver,
    url_through_real_redis,
    oss_signer_names_its_extra,
    console_script_names_its_extra,
)


def main() -> int:
    failed = 0
    for check in CHECKS:
        try:
            check()
        except CheckFailed as exc:
            failed += 1
            print(f"FAILED {check.__name__}: {exc}", file=sys.stderr)
        except Exception as exc:
            failed += 1
            print(f"FAILED {check.__name__}: {type(exc).__name__}: {exc}", file=sys.stderr)
    # One summary line, in the "N passed, N failed" form CI logs are read for.
    print(f"no-extras: {len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
