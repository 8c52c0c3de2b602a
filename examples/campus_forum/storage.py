"""Where the forum keeps file contents: a local directory (served by the app itself through
``/files``, signed with ``LocalSigner``), or an OSS bucket (served by OSS, signed with
``OSSSigner``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol

__all__ = ["LocalStorage", "OSSStorage", "Storage"]


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...


class LocalStorage:
    """Objects as files under ``root``; keys are relative paths (``avatars/1/ab12.png``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError("object key escapes the storage directory")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (OSError, ValueError):
            return None

    def delete(self, key: str) -> None:
        with contextlib.suppress(ValueError):
            self._path(key).unlink(missing_ok=True)


class OSSStorage:
    """Objects in the OSS bucket the ``OSSSigner`` signs for; browsers fetch them from OSS."""

    def __init__(self, bucket: Any) -> None:
        self.bucket = bucket

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.bucket.put_object(key, data, headers={"Content-Type": content_type})

    def get(self, key: str) -> bytes | None:
        return None  # browsers read objects from OSS directly

    def delete(self, key: str) -> None:
        self.bucket.delete_object(key)
