"""The fail-open policy: every shared-store call of the read, write and invalidate paths goes
through :class:`FailOpen`, so a store fault costs a direct signing, never a page.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .. import signals
from .base import AsyncSharedStore, SharedStore, Write

__all__ = ["FailOpen"]

log = logging.getLogger("sqla_signed_urls")
_time = time.time
_T = TypeVar("_T")


class FailOpen:
    """A shared store behind a circuit breaker.

    Each method returns ``None`` (or ``False``) instead of raising: while the breaker is open
    the store is not asked at all, and a failing call counts an error, logs one warning per
    outage, sends ``cache_error`` and opens the breaker for ``retry_after`` seconds::

        guard = FailOpen(store, retry_after=5.0, sender=urls, on_failure=channel.lost)
        raws = guard.get_many(keys)     # None: sign directly, write nothing
    """

    __slots__ = (
        "_down_until",
        "_on_failure",
        "_on_use",
        "_sender",
        "outage",
        "retry_after",
        "stats",
        "store",
    )

    def __init__(
        self,
        store: SharedStore,
        *,
        retry_after: float,
        stats: Any,
        sender: object,
        on_failure: Callable[[], None],
        on_use: Callable[[], None],
    ) -> None:
        self.store = store
        self.retry_after = retry_after
        self.stats = stats
        self._sender = sender
        self._on_failure = on_failure
        self._on_use = on_use
        self._down_until = 0.0
        #: True from a failure until a call succeeds again.
        self.outage = False

    def get_many(self, keys: Sequence[str]) -> list[bytes | str | None] | None:
        """The stored values, or ``None`` when the store is skipped or failed."""
        return self._call(self.store.get_many, keys)

    def set_many(self, items: Sequence[Write]) -> bool:
        """Whether the writes reached the store."""
        return self._call(self._set_many, items) is not None

    def _set_many(self, items: Sequence[Write]) -> bool:
        self.store.set_many(items)
        return True

    def delete_and_publish(self, keys: list[str]) -> int | None:
        """Delete ``keys`` and tell every process to drop them from its in-process layer;
        the number removed, or ``None`` when that could not be done now."""

        def both(keys: list[str]) -> int:
            removed = self.store.delete_many(keys)
            self.store.publish("\n".join(keys))
            return removed

        return self._call(both, keys)

    async def aset_many(self, store: AsyncSharedStore, items: Sequence[Write]) -> bool:
        """:meth:`set_many` through ``store``, the async twin of the store."""

        async def write(items: Sequence[Write]) -> bool:
            await store.set_many(items)
            return True

        return await self.acall(write, items) is not None

    async def adelete_and_publish(self, store: AsyncSharedStore, keys: list[str]) -> int | None:
        """:meth:`delete_and_publish` through ``store``, the async twin of the store."""

        async def both(keys: list[str]) -> int:
            removed = await store.delete_many(keys)
            await store.publish("\n".join(keys))
            return removed

        return await self.acall(both, keys)

    def _call(self, op: Callable[[Any], _T], arg: Any) -> _T | None:
        if self._down_until and _time() < self._down_until:
            return None
        self._on_use()
        try:
            result = op(arg)
        except Exception as exc:
            self.failed(exc)
            return None
        if self.outage:
            self.recovered()
        return result

    @property
    def skipping(self) -> bool:
        """True while the breaker is open: the store is not asked."""
        return bool(self._down_until) and _time() < self._down_until

    async def acall(self, op: Callable[[Any], Awaitable[_T]], arg: Any) -> _T | None:
        """``await op(arg)`` under the same breaker as the sync calls (an async store of the
        same Redis): ``None`` when skipped or failed. A failure never raises."""
        if self._down_until and _time() < self._down_until:
            return None
        self._on_use()
        try:
            result = await op(arg)
        except Exception as exc:
            self.failed(exc)
            return None
        if self.outage:
            self.recovered()
        return result

    def failed(self, exc: BaseException) -> None:
        """Count the fault, warn once per outage, and skip the store for ``retry_after``."""
        self.stats.errors += 1
        self._on_failure()
        if not self.outage:
            self.outage = True
            self.stats.breaker_opened += 1
            log.warning(
                "Redis unavailable (%s: %s); signing URLs directly, retrying every %gs",
                type(exc).__name__,
                exc,
                self.retry_after,
            )
        self._down_until = _time() + self.retry_after
        if signals.cache_error.receivers:
            signals.cache_error.send(self._sender, error=exc)

    def recovered(self) -> None:
        if self.outage:
            self.outage = False
            self._down_until = 0.0
            log.warning("Redis reachable again; caching signed URLs")
