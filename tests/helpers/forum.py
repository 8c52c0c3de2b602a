"""The Campus Forum example in tests: its configuration, isolated from the environment, files
under ``tmp_path``, and for the async app a database of its own (aiosqlite in ``tmp_path``, or
a PostgreSQL schema on ``DATABASE_URL`` that the app reaches through asyncpg); and the forum
under real web servers (:class:`ForumServer`: gunicorn or uvicorn processes on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import unescape
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

DATABASE_URL = os.environ.get("DATABASE_URL") or None
SECRET = "test-files-secret-0123456789abcdef"
#: Settings from the environment that would change what the tests run against.
ISOLATE = {
    "ADMIN_TOKEN": None,
    "OSS_ACCESS_KEY_ID": None,
    "OSS_ACCESS_KEY_SECRET": None,
    "OSS_ENDPOINT": None,
    "OSS_BUCKET": None,
    "OSS_REGION": None,
    "OSS_SESSION_TOKEN": None,
}


@contextmanager
def forum_database(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``DATABASE_URL`` and ``ENGINE_OPTIONS`` for the app: a SQLite file, or a PostgreSQL
    schema created for the test and dropped afterwards (the app itself runs on asyncpg)."""
    if not DATABASE_URL:
        yield {"DATABASE_URL": f"sqlite:///{tmp_path / 'forum.db'}", "ENGINE_OPTIONS": {}}
        return
    schema = f"t_forum_{uuid.uuid4().hex[:10]}"
    admin = create_engine(DATABASE_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield {
            "DATABASE_URL": DATABASE_URL,
            "ENGINE_OPTIONS": {"connect_args": {"server_settings": {"search_path": schema}}},
        }
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def forum_config(tmp_path: Path, database: dict[str, Any], **config: Any) -> dict[str, Any]:
    """The app's configuration: isolated from the environment, files under ``tmp_path``."""
    return {
        **ISOLATE,
        **database,
        "REDIS_URL": None,
        "FILES_SECRET": SECRET,
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "INSTANCE_PATH": str(tmp_path / "instance"),
        **config,
    }


# -- the forum under real web servers (gunicorn, uvicorn) -------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
#: What a worker writes to its log when its app has started (uvicorn, and gunicorn's uvicorn
#: workers).
STARTUP_COMPLETE = "Application startup complete."
#: A signature that was not redacted, in any log line.
RAW_SIGNATURE = re.compile(r"(?i)[?&](?:x-(?:oss|amz)-)?signature=(?!<redacted>)[^&\s\"']")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    location: str | None


def http(port: int, method: str, path: str, *, timeout: float = 30.0) -> Reply:
    """One request to 127.0.0.1:``port``, on a connection of its own (redirects not followed)."""
    conn = HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        body = response.read().decode("utf-8", errors="replace")
        return Reply(response.status, body, response.getheader("Location"))
    finally:
        conn.close()


def server_env(**settings: str | None) -> dict[str, str]:
    """The environment of a server process: this one without any forum setting, plus
    ``settings`` (``None`` leaves one out), the checkout on ``PYTHONPATH`` and
    ``PYTHONFAULTHANDLER=1`` (a native crash leaves a stack in the log)."""
    from examples.campus_forum.common import ENV_SETTINGS

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ENV_SETTINGS and not k.startswith(("FILE_URL_", "OSS_"))
    }
    env.update(PYTHONPATH=str(REPO_ROOT), PYTHONFAULTHANDLER="1", PYTHONUNBUFFERED="1")
    env.update({k: v for k, v in settings.items() if v is not None})
    return env


class ForumServer:
    """A web server process (gunicorn or uvicorn) serving the forum on 127.0.0.1:``port``,
    with its logs in ``directory``: ``access.log`` and ``error.log`` (gunicorn) and
    ``output.log`` (standard output and error of every process).

    ::

        server = ForumServer.gunicorn(tmp_path, "examples.campus_forum:create_app()", env)
        server.start().wait_ready()
        assert server.get("/").status == 200
        server.stop()
    """

    def __init__(
        self, directory: Path, command: list[str], env: dict[str, str], port: int, kind: str
    ) -> None:
        self.directory = directory
        self.command = command
        self.env = env
        self.port = port
        #: ``gunicorn`` (sync workers: ready when ``post_worker_init`` ran) or ``uvicorn``
        #: (uvicorn processes or gunicorn's uvicorn workers: ready when the lifespan ran).
        self.kind = kind
        self.workers = 4
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def gunicorn(
        cls,
        directory: Path,
        app: str,
        env: dict[str, str],
        *,
        workers: int = 4,
        preload: bool = False,
        uvicorn_workers: bool = False,
    ) -> ForumServer:
        """``gunicorn -c python:examples.campus_forum.gunicorn_conf`` (the documented settings;
        a hook added here marks each sync worker ready) with ``workers`` workers."""
        directory.mkdir(parents=True, exist_ok=True)
        ready = directory / "ready"
        ready.mkdir(exist_ok=True)
        config = directory / "gunicorn_test.py"
        config.write_text(
            "from pathlib import Path\n\n"
            "from examples.campus_forum.gunicorn_conf import *  # the documented settings\n\n\n"
            "def post_worker_init(worker):\n"
            f"    Path({str(ready)!r}, str(worker.pid)).touch()\n"
        )
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(config),
            "-w",
            str(workers),
            "-b",
            f"{HOST}:{port}",
            "--access-logfile",
            str(directory / "access.log"),
            "--error-logfile",
            str(directory / "error.log"),
            "--timeout",
            "60",
            "--graceful-timeout",
            "10",
        ]
        if _gunicorn_has("control_socket_disable"):
            command.append("--no-control-socket")  # no socket under ~/.gunicorn
        if preload:
            command.append("--preload")
        if uvicorn_workers:
            command += ["-k", "uvicorn_worker.UvicornWorker"]
        server = cls(
            directory, [*command, app], env, port, "uvicorn" if uvicorn_workers else "gunicorn"
        )
        server.workers = workers
        return server

    @classmethod
    def uvicorn(cls, directory: Path, env: dict[str, str], *, workers: int = 4) -> ForumServer:
        """``uvicorn --factory examples.campus_forum.asgi:create_app --workers N``."""
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "examples.campus_forum.asgi:create_app",
            "--workers",
            str(workers),
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        server = cls(directory, command, env, port, "uvicorn")
        server.workers = workers
        return server

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> ForumServer:
        with (self.directory / "output.log").open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready_workers(self) -> int:
        if self.kind == "gunicorn":
            return len(list((self.directory / "ready").iterdir()))
        return self.logs().count(STARTUP_COMPLETE)

    def wait_ready(self, limit: float = 120.0) -> float:
        """Wait until every worker has started its app and the server answers; return how
        long it took. Fails when the server exits first (a worker failed to boot)."""
        start = time.monotonic()
        while True:
            if not self.running:
                pytest.fail(f"the server exited before it was ready:\n{self.tail()}")
            if self.ready_workers() >= self.workers:
                try:
                    if self.get("/healthz", timeout=5).status == 200:
                        return time.monotonic() - start
                except OSError:
                    pass
            if time.monotonic() - start > limit:
                pytest.fail(f"the server was not ready within {limit:g} s:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self, limit: float = 30.0) -> int | None:
        """Shut down gracefully (gunicorn: SIGTERM, uvicorn: SIGINT); SIGKILL to the process
        group when it takes longer than ``limit``. Returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            # gunicorn shuts down gracefully on SIGTERM, uvicorn on SIGINT (Ctrl-C)
            proc.send_signal(signal.SIGTERM if "gunicorn" in self.command else signal.SIGINT)
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode

    # -- requests and logs --------------------------------------------------------------

    def get(self, path: str, *, timeout: float = 30.0) -> Reply:
        return http(self.port, "GET", path, timeout=timeout)

    def post(self, path: str, *, timeout: float = 30.0) -> Reply:
        return http(self.port, "POST", path, timeout=timeout)

    def log(self, name: str) -> str:
        try:
            return (self.directory / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> str:
        """Every log the server wrote."""
        return "".join(self.log(n) for n in ("error.log", "output.log", "access.log"))

    def tail(self, lines: int = 40) -> str:
        from examples.campus_forum.common import redact

        text = self.log("error.log") + self.log("output.log")
        return redact("\n".join(text.splitlines()[-lines:]))

    def crashes(self) -> list[str]:
        """Lines that tell of a failed request, a crashed or killed worker, or a native
        crash (``PYTHONFAULTHANDLER``)."""
        bad = (
            "Traceback",
            "Fatal Python error",
            "Segmentation fault",
            "SIGSEGV",
            "WORKER TIMEOUT",
            "Worker failed to boot",
            "was sent SIGKILL",
            "Exception in ASGI application",
            "Error handling request",
            "Application startup failed",
        )
        text = self.log("error.log") + self.log("output.log")
        return [line for line in text.splitlines() if any(b in line for b in bad)]


def _gunicorn_has(setting: str) -> bool:
    from gunicorn.config import Config

    return setting in Config().settings


def page_files(html: str) -> list[tuple[int, str]]:
    """``(file id, URL)`` of every image and file link on a rendered page."""
    found = []
    for tag in re.findall(r"<(?:img|a)\s[^>]*>", html):
        url = re.search(r'(?:src|href)="(/files/[^"]+)"', tag)
        ident = re.search(r'data-file-id="(\d+)"', tag)
        if url and ident:
            found.append((int(ident.group(1)), unescape(url.group(1))))
    return found
