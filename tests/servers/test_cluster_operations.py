"""CacheService on a real 3-master Redis Cluster: stats, refresh, clear and warm with keys
spread over every master.
"""

from __future__ import annotations

from typing import Any

from sqla_signed_urls import CacheService, SignedURLs
from sqla_signed_urls.testing import FakeSigner

from ..conftest import Base, File, add_files, cache_files
from ..helpers.entries import put_entry
from ._groups import RedisClusterGroup


def test_operations_on_a_real_redis_cluster(
    redis_cluster: RedisClusterGroup, db: Any, signer: FakeSigner
) -> None:
    urls = SignedURLs(
        signer, redis=redis_cluster.url(), key_prefix="ops:file_url:", local_cache_size=0
    )
    try:
        urls.install(Base)
        ids = add_files(db, *(f"c/{i}.png" for i in range(40)))  # keys spread over the slots
        cache_files(urls, db, ids)
        service = CacheService(urls, session_factory=db, model=File)

        stats = service.get_cache_stats()
        assert stats["keys"] == 40 and stats["misses"] == 40
        assert stats["memory_used_bytes"] > 0 and stats["redis_db"] == 0
        assert service.count_keys() == 40
        for i in ids[:5]:
            put_entry(urls, f"ops:file_url:{i}", f"c/{i}.png", cache_left=60)
        assert service.refresh_expired_urls(600) == 5
        assert service.clear_file_url_cache(ids[0]) == 1
        assert service.clear_file_url_cache() == 39
        assert service.count_keys() == 0
        assert service.warm_file_url_cache(limit=10) == 10
    finally:
        urls.uninstall()
        urls.close()
        urls.redis.close()
