"""Invalidation after commit: a new object key or a deleted row drops the cached URL once
the outermost transaction commits; other columns and rollbacks drop nothing; ORM bulk UPDATE
and DELETE statements invalidate the rows they touch.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, update

from sqla_signed_urls import SignedURLs

from ..conftest import File, add_files
from .conftest import Recorder


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


# -- ORM bulk statements -----------------------------------------------------------------------


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
