"""Helpers for tests, ours and yours.

- :class:`CountingRedis` counts the Redis round trips a page costs;
- :class:`FakeSigner` signs deterministic URLs and can be told to fail;
- :func:`check_signer` checks a signer of your own against the contract the cache relies on;
- :class:`SharedStoreContract` and :class:`AsyncSharedStoreContract` are the contract test
  suites of shared stores, sync and asyncio.

::

    from sqla_signed_urls.testing import CountingRedis, FakeSigner

    client = CountingRedis(fakeredis.FakeRedis())
    urls = SignedURLs(FakeSigner(), redis=client)
    urls.resolve(files)
    assert client.round_trips == 1
"""

from __future__ import annotations

from ._helpers import CountingAsyncRedis, CountingRedis, FakeSigner
from .signers import check_signer
from .stores import AsyncSharedStoreContract, SharedStoreContract

__all__ = [
    "AsyncSharedStoreContract",
    "CountingAsyncRedis",
    "CountingRedis",
    "FakeSigner",
    "SharedStoreContract",
    "check_signer",
]
