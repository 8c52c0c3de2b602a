"""Throwaway Redis servers: the process management behind the fixtures in ``conftest.py``.

Every server here is a ``redis-server`` process of its own on a free loopback port, with its
files in a temporary directory:

- :class:`RedisServer`: standalone, optionally with an ACL user and a password, or TLS;
- :class:`SilentServer`: a socket that accepts connections and never answers;
- the groups built from them (a cluster, a Sentinel) are in ``_groups.py``.

Every wait has a deadline; every process is killed in ``stop()`` (and at interpreter exit as
a safety net). Nothing listens anywhere but 127.0.0.1.

Without ``redis-server`` on ``PATH``, :func:`require_redis_server` skips the test with a reason,
or fails it when ``SQLA_SIGNED_URLS_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..log_hygiene_plugin import register_secret

HOST = "127.0.0.1"
REQUIRE_SERVERS = os.environ.get("SQLA_SIGNED_URLS_REQUIRE_SERVERS") == "1"
#: Generous: a loaded CI machine may be slow to start a process; nothing waits this long
#: when things work.
START_DEADLINE = 30.0
#: The ACL user and password of the ``redis_acl_server`` and ``redis_tls_server`` fixtures.
ACL_USER = "app"
ACL_PASSWORD = "acl-Redis-pw-7f3a9c"

_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def _kill_leftovers() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


atexit.register(_kill_leftovers)


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVERS:
        pytest.fail(f"{reason} (SQLA_SIGNED_URLS_REQUIRE_SERVERS=1 turns this skip into a failure)")
    pytest.skip(reason)


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """Path of ``redis-server``, or skip (laptop) / fail (CI) when it is not installed."""
    path = redis_server_binary()
    if path is None:
        _unavailable("needs redis-server on PATH to start throwaway servers")
    assert path is not None
    return path


def require_redis_cli() -> str:
    require_redis_server()
    path = shutil.which("redis-cli")
    if path is None:
        _unavailable("needs redis-cli on PATH to create a Redis Cluster")
    assert path is not None
    return path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port nobody listens on (and ``port + 10000`` too, for a cluster bus).

    Picked at random below the ephemeral range so that concurrent test runs rarely collide.
    """
    for _ in range(500):
        port = random.randint(20000, 29999)
        if _port_free(port) and (not with_bus or _port_free(port + 10000)):
            return port
    raise RuntimeError("no free loopback port found")


def _send(port: int, payload: bytes, *, timeout: float = 1.0) -> bytes:
    """Send raw RESP to a port and return what comes back first (b"" on no answer)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(payload)
        try:
            return s.recv(65536)
        except TimeoutError:
            return b""


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisServer:
    """One ``redis-server`` on ``127.0.0.1:<port>``; restartable on the same port.

    ::

        with RedisServer(tmp_path) as server:
            client = redis.Redis.from_url(server.url())
            server.kill()          # an outage
            server.start()         # back on the same port, empty
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        tls: bool = False,
        cluster: bool = False,
        extra_config: str = "",
    ) -> None:
        self.binary = require_redis_server()
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="sqla-signed-urls-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._port_chosen_here = port is None
        self._ever_started = False
        self.port = port or free_port(with_bus=cluster)
        self.user = user
        self.password = password
        register_secret(password)
        self.tls = tls
        self.cluster = cluster
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file: Path | None = None
        if tls:
            self.ca_file = _make_tls_files(self.dir)

    # -- config -------------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        return self.dir / f"redis-{self.port}.conf"

    @property
    def logfile(self) -> Path:
        return self.dir / f"redis-{self.port}.log"

    def _config(self) -> str:
        lines = [
            f"bind {HOST}",
            "protected-mode no",
            f"dir {self.dir}",
            'save ""',
            "appendonly no",
            "loglevel notice",
            f"logfile {self.logfile}",
            f"pidfile {self.dir / f'redis-{self.port}.pid'}",
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.dir / 'server.crt'}",
                f"tls-key-file {self.dir / 'server.key'}",
                f"tls-ca-cert-file {self.dir / 'ca.crt'}",
                "tls-auth-clients no",
            ]
        else:
            lines.append(f"port {self.port}")
        if self.password is not None:
            if self.user is None or self.user == "default":
                lines.append(f"requirepass {self.password}")
            else:
                lines.append("user default off")
                lines.append(f"user {self.user} on >{self.password} ~* &* +@all")
        if self.cluster:
            lines += [
                "cluster-enabled yes",
                f"cluster-config-file nodes-{self.port}.conf",
                "cluster-node-timeout 5000",
                "cluster-require-full-coverage yes",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def url(self, *, db: int = 0, with_auth: bool = True, query: str = "") -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if with_auth and self.password is not None:
            auth = f"{self.user or ''}:{self.password}@"
        tail = f"/{db}"
        if query:
            tail += f"?{query}"
        return f"{scheme}://{auth}{HOST}:{self.port}{tail}"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING.

        A first start on a port picked here moves to another free port if someone took it
        meanwhile; a restart always comes back on the same port.
        """
        if self.running:
            return self
        deadline = time.monotonic() + START_DEADLINE
        while True:
            self.conf.write_text(self._config())
            proc = subprocess.Popen(
                [self.binary, str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            with _live_lock:
                _live.add(proc)
            self.proc = proc
            if self._wait_ready(deadline):
                self._ever_started = True
                return self
            # Most likely the port is held: by our previous process (wait), or by a stranger.
            self._reap()
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"redis-server on port {self.port} did not start: {self.log_tail()}"
                )
            if self._port_chosen_here and not self._ever_started:
                self.port = free_port(with_bus=self.cluster)
            time.sleep(0.1)

    def _wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.02)
        return False

    def ping(self) -> bool:
        """True once the server answers (PONG, or NOAUTH when it wants a password)."""
        if self.tls:
            return self._tls_ping()
        try:
            reply = _send(self.port, _resp("PING"), timeout=0.5)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH", b"-NOPERM", b"-WRONGPASS"))

    def _tls_ping(self) -> bool:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with (
                socket.create_connection((HOST, self.port), timeout=0.5) as raw,
                ctx.wrap_socket(raw, server_hostname=HOST) as s,
            ):
                s.sendall(_resp("PING"))
                reply = s.recv(1024)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        """SIGKILL: an outage with no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    def _reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with _live_lock:
            _live.discard(proc)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_tls_files(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 (openssl), return the CA file."""
    openssl = shutil.which("openssl")
    if openssl is None:
        _unavailable("needs openssl on PATH to make TLS certificates")
    assert openssl is not None

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run(
        "req",
        "-x509",
        *key,
        "-days",
        "2",
        "-subj",
        "/CN=sqla-signed-urls test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    run("req", *key, "-subj", f"/CN={HOST}", "-keyout", "server.key", "-out", "server.csr")
    (directory / "server.ext").write_text(f"subjectAltName=IP:{HOST}\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "server.ext",
    )
    return directory / "ca.crt"


class SilentServer:
    """A TCP socket on 127.0.0.1 that accepts connections, reads, and never answers.

    ``accepted`` counts connections, so a test can tell how often a client tried.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((HOST, 0))
        self._sock.listen(128)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self.received = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="silent-redis", daemon=True)

    def url(self, *, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def start(self) -> SilentServer:
        self._thread.start()
        return self

    def _run(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.05):
                    if key.fileobj is self._sock:
                        try:
                            conn, _ = self._sock.accept()
                        except OSError:
                            continue
                        conn.setblocking(False)
                        self._conns.append(conn)
                        self.accepted += 1
                        sel.register(conn, selectors.EVENT_READ)
                    else:
                        conn = key.fileobj  # type: ignore[assignment]
                        try:
                            data = conn.recv(65536)
                        except OSError:
                            data = b""
                        if data:
                            self.received += len(data)
                        else:
                            sel.unregister(conn)
        finally:
            sel.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        self._conns.clear()
        self._sock.close()

    def __enter__(self) -> SilentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def reap_unclosed_sockets() -> None:
    """Collect garbage now, ignoring ResourceWarnings from sockets nobody closed.

    ``RedisCluster.from_url()`` clients (redis-py 8.1) leave one socket per master open after
    ``close()``; left to the collector, they surface as a ResourceWarning in whatever test runs
    next. Tests that use such clients call this when they are done with them.
    """
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def open_connections_to(ports: list[int]) -> int | None:
    """How many TCP connections this process holds open to ``ports`` on 127.0.0.1.

    Reads ``/proc`` (Linux); ``None`` where that is not available.
    """
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return None
    inodes = set()
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    wanted = {f"0100007F:{port:04X}" for port in ports}
    count = 0
    for table in ("/proc/net/tcp",):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if remote in wanted and state == "01" and inode in inodes:  # 01: ESTABLISHED
                count += 1
    return count


@contextlib.contextmanager
def redis_client(url: str, **kwargs: Any) -> Iterator[Any]:
    """A plain redis-py client for checking what a server holds; closed afterwards."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, **kwargs)
    try:
        yield client
    finally:
        client.close()
