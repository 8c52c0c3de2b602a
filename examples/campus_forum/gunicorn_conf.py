"""gunicorn settings for the Campus Forum: access and error logs without URL signatures.

::

    gunicorn -c python:examples.campus_forum.gunicorn_conf -w 4 'examples.campus_forum:create_app()'
    gunicorn -c python:examples.campus_forum.gunicorn_conf -w 4 \\
        -k uvicorn_worker.UvicornWorker 'examples.campus_forum.asgi:create_app()'

A signed URL is a bearer credential, and gunicorn logs the request line (``%(r)s``), the query
string (``%(q)s``), the referrer, and the URI of a request whose handling failed.
:class:`RedactingLogger` blanks signatures and tokens in all of them before any handler sees
them, whatever ``access_log_format`` says and whether or not the app has been loaded; the
apps' own log filter (``common.redact_access_logs``) stays on as well. Options given on the
command line override the ones here.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from .common import redact, redact_access_logs

__all__ = ["RedactingLogger", "accesslog", "logger_class"]


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with URL signatures and tokens blanked (``signature=<redacted>``)
    in every access log atom, and a redacting filter on the gunicorn and uvicorn loggers."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        redact_access_logs()

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        return {k: redact(v) if isinstance(v, str) else v for k, v in atoms.items()}


#: Write the access log to standard output (``--access-logfile PATH`` to write a file).
accesslog = "-"
logger_class = "examples.campus_forum.gunicorn_conf.RedactingLogger"
