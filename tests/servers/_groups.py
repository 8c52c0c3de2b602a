"""Groups of Redis processes: a three-master cluster and a Sentinel-watched master (see
``_processes.py`` for the single servers they are built from)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ._processes import (
    HOST,
    START_DEADLINE,
    RedisServer,
    _live,
    _live_lock,
    _resp,
    _send,
    free_port,
    require_redis_cli,
    require_redis_server,
)


class RedisClusterGroup:
    """Three masters with slots 0-16383 split between them, no replicas.

    ``startup_nodes`` and ``url`` are what clients need; ``masters`` are the servers.
    """

    def __init__(self, directory: Path | str | None = None, *, masters: int = 3) -> None:
        require_redis_server()
        self.cli = require_redis_cli()
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="sqla-signed-urls-cluster-"))
        self.masters = [RedisServer(self.dir / f"node{i}", cluster=True) for i in range(masters)]

    @property
    def ports(self) -> list[int]:
        return [m.port for m in self.masters]

    def url(self, *, query: str = "cluster=true") -> str:
        return (
            f"redis://{HOST}:{self.ports[0]}/0?{query}"
            if query
            else (f"redis://{HOST}:{self.ports[0]}/0")
        )

    def startup_nodes(self) -> list[Any]:
        from redis.cluster import ClusterNode

        return [ClusterNode(HOST, port) for port in self.ports]

    def start(self) -> RedisClusterGroup:
        try:
            for master in self.masters:
                master.start()
            subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(f"{HOST}:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            self._wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + START_DEADLINE * 2
        while time.monotonic() < deadline:
            states = []
            for port in self.ports:
                try:
                    states.append(_send(port, _resp("CLUSTER", "INFO")))
                except OSError:
                    states.append(b"")
            if all(b"cluster_state:ok" in s and b"cluster_known_nodes:3" in s for s in states):
                return
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok in time")

    def keys_per_master(self, pattern: str) -> dict[int, int]:
        """How many keys match ``pattern`` on each master (checked node by node)."""
        import redis

        counts = {}
        for port in self.ports:
            with redis.Redis(host=HOST, port=port, socket_timeout=5) as node:
                counts[port] = sum(1 for _ in node.scan_iter(match=pattern, count=1000))
        return counts

    def close(self) -> None:
        for master in self.masters:
            master.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class SentinelGroup:
    """A master and one sentinel (quorum 1) watching it as ``service_name``."""

    service_name = "sqla-signed-urls"

    def __init__(self, directory: Path | str | None = None) -> None:
        self.binary = require_redis_server()
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="sqla-signed-urls-sentinel-"))
        self.master = RedisServer(self.dir / "master")
        self.sentinel_port = free_port()
        self.sentinel_dir = self.dir / "sentinel"
        self.sentinel_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(HOST, self.sentinel_port)]

    def start(self) -> SentinelGroup:
        try:
            self.master.start()
            conf = self.sentinel_dir / "sentinel.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"bind {HOST}",
                        "protected-mode no",
                        f"port {self.sentinel_port}",
                        f"dir {self.sentinel_dir}",
                        f"logfile {self.sentinel_dir / 'sentinel.log'}",
                        f"sentinel monitor {self.service_name} {HOST} {self.master.port} 1",
                        f"sentinel down-after-milliseconds {self.service_name} 5000",
                    ]
                )
                + "\n"
            )
            self.proc = subprocess.Popen(
                [self.binary, str(conf), "--sentinel"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            with _live_lock:
                _live.add(self.proc)
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        want = str(self.master.port).encode()
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("redis-server --sentinel exited at start")
            try:
                reply = _send(
                    self.sentinel_port,
                    _resp("SENTINEL", "get-master-addr-by-name", self.service_name),
                    timeout=0.5,
                )
            except OSError:
                reply = b""
            if want in reply:
                return
            time.sleep(0.05)
        raise RuntimeError("the sentinel did not report its master in time")

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            with _live_lock:
                _live.discard(proc)
        self.master.close()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
