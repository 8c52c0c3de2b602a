"""What the Flask and FastAPI admin APIs share: their limits, the request-body and query
parsers and the field validators, so both answer the same request with the same status and
message (the dashboard they both serve is :mod:`.dashboard`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.exc import DBAPIError

__all__ = [
    "FIELDS",
    "MAX_BODY_BYTES",
    "MAX_WARM_LIMIT",
    "MAX_WITHIN",
    "Refused",
    "db_message",
    "history_query",
    "parse_body",
]

#: Larger request bodies are refused with 413 before they are parsed.
MAX_BODY_BYTES = 16 * 1024
#: The most rows one warm request may ask for.
MAX_WARM_LIMIT = 100_000
#: The longest refresh horizon one request may ask for: a week.
MAX_WITHIN = 7 * 24 * 3600


class Refused(Exception):
    """A request the admin API answers with ``status`` and ``{"error": message, "field": ...}``
    (for a 405, ``field`` carries the allowed method)."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


def too_big() -> Refused:
    return Refused(f"request body larger than {MAX_BODY_BYTES} bytes", status=413)


def parse_body(raw: bytes, fields: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """The JSON object in ``raw`` (an empty body: ``{}``), every field validated."""
    if len(raw) > MAX_BODY_BYTES:
        raise too_big()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise Refused("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Refused("request body must be a JSON object such as {}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields)) or "none"
        raise Refused(f"unknown field {unknown[0]!r} (allowed: {allowed})", field=str(unknown[0]))
    return {name: fields[name](value) for name, value in data.items()}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _whole(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Refused(
            f"{field} must be a whole number from {low} to {high}, got {json.dumps(value)}",
            field=field,
        )
    return value


def _file_id(value: Any) -> int:
    if value is None:
        raise Refused(
            "file_id must be a whole number; leave it out to clear every key", field="file_id"
        )
    return _whole("file_id", value, 0, 2**63 - 1)


def _file_type(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 64
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        raise Refused(
            "file_type must be a non-empty string of at most 64 printable characters",
            field="file_type",
        )
    return value


#: The validator of each body field the endpoints accept.
FIELDS: dict[str, Callable[[Any], Any]] = {
    "file_id": _file_id,
    "file_type": _file_type,
    "limit": lambda value: _whole("limit", value, 1, MAX_WARM_LIMIT),
    "within": lambda value: _whole("within", value, 1, MAX_WITHIN),
}


def fields(*names: str) -> dict[str, Callable[[Any], Any]]:
    """The validators of ``names``, for one endpoint's body."""
    return {name: FIELDS[name] for name in names}


def history_query(query: Mapping[str, str]) -> int | None:
    """``since`` of ``GET <prefix>/history?since=<Unix seconds>`` (``None`` without it)."""
    unknown = sorted(set(query) - {"since"})
    if unknown:
        raise Refused(f"unknown parameter {unknown[0]!r} (allowed: since)", field=unknown[0])
    raw = query.get("since")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise Refused(
            f"since must be a time in whole Unix seconds, got {json.dumps(raw[:40])}",
            field="since",
        )
    return int(raw)


def db_message(exc: DBAPIError) -> str:
    """The driver's first line: ``str(exc)`` carries the SQL and its parameters."""
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    return f"{type(exc.orig).__name__}: {lines[0] if lines else 'error'}"
