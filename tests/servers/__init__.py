"""Tests against real servers; the servers themselves are fixtures (``conftest.py``).

The process classes are importable from here too, for scripts outside the suite
(``benchmarks/bench_faults.py``): ``from tests.servers import RedisServer``.
"""

from ._groups import RedisClusterGroup, SentinelGroup
from ._processes import (
    RedisServer,
    SilentServer,
    free_port,
    require_redis_server,
)

__all__ = [
    "RedisClusterGroup",
    "RedisServer",
    "SentinelGroup",
    "SilentServer",
    "free_port",
    "require_redis_server",
]
