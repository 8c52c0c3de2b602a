"""The contract every shared store keeps, as a reusable test suite, for sync and async stores.

Subclass :class:`SharedStoreContract` in a test module and give it a ``make_store`` fixture:
a callable that returns a store of yours for a key prefix, on one backend, empty, with the
same prefix always naming the same keys. Every test of the suite then runs against it::

    import pytest
    from sqla_signed_urls.testing import SharedStoreContract

    class TestMyStore(SharedStoreContract):
        @pytest.fixture
        def make_store(self):
            return lambda prefix: MyStore(my_client, prefix)

An :class:`~sqla_signed_urls.cache.base.AsyncSharedStore` is checked by
:class:`AsyncSharedStoreContract`, with the same promises. Each test runs in an event loop of
its own (``asyncio.run``; no pytest plugin needed), and ``make_store(prefix)`` is called inside
it, because an asyncio client belongs to the loop it runs in. It may return the store, or be an
``async def`` that returns it, or an ``async def`` that *yields* it and then closes what it
opened (run after the test, still inside the loop, like a pytest yield fixture)::

    import pytest
    import redis.asyncio
    from sqla_signed_urls.cache.aredis import AsyncRedisStore
    from sqla_signed_urls.testing import AsyncSharedStoreContract

    class TestMyAsyncStore(AsyncSharedStoreContract):
        @pytest.fixture
        def make_store(self):
            async def make(prefix):
                client = redis.asyncio.Redis.from_url("redis://localhost:6379/15")
                yield AsyncRedisStore(client, prefix)
                await client.aclose()

            return make

Each promise is written once, as a coroutine; a sync store is driven through the same code by
an adapter that calls its methods directly, without an event loop (so a sync store that uses
one of its own internally is checked as it runs in production).

The suite needs no pytest import of its own, so importing it costs nothing outside tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
    Sequence,
)
from typing import Any

from ..cache.base import (
    AsyncSharedStore,
    AsyncSubscription,
    SharedStore,
    Subscription,
    Write,
)

__all__ = ["AsyncSharedStoreContract", "SharedStoreContract"]

MakeStore = Callable[[str], SharedStore]
#: What ``make_store(prefix)`` of :class:`AsyncSharedStoreContract` may return.
MadeAsyncStore = AsyncSharedStore | Awaitable[AsyncSharedStore] | AsyncIterator[AsyncSharedStore]
MakeAsyncStore = Callable[[str], MadeAsyncStore]

#: Keys a store must hold as they are: the usual layout, namespaces, encoded primary keys.
ODD_KEYS = ("1", "42", "avatar:7", "b0a1f", "2024-01-01T00%3A00%3A00,3", "caf%C3%A9", "x" * 200)


def _write(key: str, until: int, value: bytes | None = None, ttl: int = 600) -> Write:
    return (key, value if value is not None else f"value of {key}".encode(), ttl, until)


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


async def _batches(batches: AsyncIterator[list[str]]) -> list[list[str]]:
    return [batch async for batch in batches]


async def _keys(batches: AsyncIterator[list[str]]) -> list[str]:
    return [key async for batch in batches for key in batch]


# -- how a test reaches its stores ------------------------------------------------------------


class _Test:
    """What a promise is checked with: its stores and a clock to wait on."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def prefix_for(self, other: bool) -> str:
        # The other prefix is a sibling, not an extension: "a:" would cover "a:b:" keys.
        return self.prefix.rstrip(":") + "_other:" if other else self.prefix

    async def store(self, other: bool = False) -> AsyncSharedStore:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        raise NotImplementedError


class _SyncTest(_Test):
    def __init__(self, prefix: str, make_store: MakeStore) -> None:
        super().__init__(prefix)
        self.make_store = make_store

    async def store(self, other: bool = False) -> AsyncSharedStore:
        prefix = self.prefix_for(other)
        store = self.make_store(prefix)
        assert isinstance(store, SharedStore), f"make_store gave {type(store).__name__}"
        assert store.prefix == prefix, "store.prefix must be the prefix given"
        return _SyncStore(store)

    async def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _AsyncTest(_Test):
    def __init__(
        self, prefix: str, make_store: MakeAsyncStore, cleanups: contextlib.AsyncExitStack
    ) -> None:
        super().__init__(prefix)
        self.make_store = make_store
        self.cleanups = cleanups

    async def store(self, other: bool = False) -> AsyncSharedStore:
        prefix = self.prefix_for(other)
        made = self.make_store(prefix)
        store: object
        if inspect.isasyncgen(made):
            store = await made.__anext__()
            self.cleanups.push_async_callback(_finish, made)
        elif inspect.isawaitable(made):
            store = await made
        else:
            store = made
        assert isinstance(store, AsyncSharedStore), f"make_store gave {type(store).__name__}"
        assert store.prefix == prefix, "store.prefix must be the prefix given"
        return store

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _finish(made: Any) -> None:
    try:
        await made.__anext__()
    except StopAsyncIteration:
        return
    await made.aclose()
    raise AssertionError("make_store yielded more than one store")


def _run_without_loop(check: Coroutine[Any, Any, None]) -> None:
    """Run a check on a sync store: its awaits never suspend, so no event loop is needed."""
    try:
        check.send(None)
    except StopIteration:
        return
    check.close()
    raise RuntimeError("a check of a sync store awaited something that needs an event loop")


class _SyncStore(AsyncSharedStore):
    """A sync store seen through the async interface: each coroutine calls the sync method."""

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self.prefix = store.prefix
        self.errors = store.errors
        self.keeps_history = store.keeps_history

    async def get_many(self, keys: Sequence[str]) -> list[bytes | str | None]:
        return self.store.get_many(keys)

    async def set_many(self, items: Sequence[Write]) -> None:
        self.store.set_many(items)

    async def delete_many(self, keys: Sequence[str]) -> int:
        return self.store.delete_many(keys)

    async def clear(self) -> int:
        return self.store.clear()

    async def scan_keys(self, count: int = 1000) -> AsyncIterator[list[str]]:
        for batch in self.store.scan_keys(count=count):
            yield batch

    async def live_count(self, now: int) -> int:
        return self.store.live_count(now)

    async def expiring(self, now: int, until: int, batch: int) -> AsyncIterator[list[str]]:
        for keys in self.store.expiring(now, until, batch):
            yield keys

    async def renew(self, items: Sequence[Write], gone: Sequence[str]) -> int:
        return self.store.renew(items, gone)

    async def add_counters(self, deltas: Mapping[str, int]) -> None:
        self.store.add_counters(deltas)

    async def read_counters(self) -> dict[str, int]:
        return self.store.read_counters()

    async def memory_used(self) -> int | None:
        return self.store.memory_used()

    async def publish(self, message: str) -> None:
        self.store.publish(message)

    async def subscribe(self) -> AsyncSubscription:
        subscription = self.store.subscribe()
        assert isinstance(subscription, Subscription), type(subscription).__name__
        return _SyncSubscription(subscription)

    def describe(self) -> dict[str, object]:
        return self.store.describe()

    async def live_counts(self, now: int, ahead: Sequence[int]) -> list[int]:
        return self.store.live_counts(now, ahead)

    async def try_lock(self, name: str, token: str, ttl: int) -> bool:
        return self.store.try_lock(name, token, ttl)

    async def append_history(self, at: int, point: str, keep: int) -> None:
        self.store.append_history(at, point, keep)

    async def read_history(
        self, since: int | None = None, limit: int | None = None
    ) -> list[tuple[int, str]]:
        return self.store.read_history(since, limit)


class _SyncSubscription(AsyncSubscription):
    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription

    async def next_event(self, timeout: float) -> tuple[str, str] | None:
        return self.subscription.next_event(timeout)

    async def close(self) -> None:
        self.subscription.close()


# -- the promises, once for both kinds of store -------------------------------------------------

Check = Callable[[_Test], Coroutine[Any, Any, None]]


class _StoreContract:
    """Behaviour the read path and ``CacheService`` rely on, one test per promise."""

    prefix = "contract:file_url:"

    def _check(self, make_store: Any, check: Check) -> None:
        raise NotImplementedError

    # -- reads and writes -------------------------------------------------------------------

    def test_get_many_answers_in_order_with_none_for_missing(self, make_store: Any) -> None:
        self._check(make_store, self._get_many_answers_in_order_with_none_for_missing)

    async def _get_many_answers_in_order_with_none_for_missing(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        await store.set_many(
            [_write(store.prefix + "1", now + 60), _write(store.prefix + "3", now + 60)]
        )
        keys = [store.prefix + k for k in ("1", "2", "3")]
        assert [_text(v) for v in await store.get_many(keys)] == [
            f"value of {keys[0]}",
            None,
            f"value of {keys[2]}",
        ]
        assert [_text(v) for v in await store.get_many(keys[:1])] == [f"value of {keys[0]}"]

    def test_values_and_keys_round_trip_as_they_are(self, make_store: Any) -> None:
        self._check(make_store, self._values_and_keys_round_trip_as_they_are)

    async def _values_and_keys_round_trip_as_they_are(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        value = "1764205200 1764193500 9f2c4e1a https://h/%E2%9C%93?x=1 café ✓.png".encode()
        keys = [store.prefix + k for k in ODD_KEYS]
        await store.set_many([_write(key, now + 60, value) for key in keys])
        assert [_text(v) for v in await store.get_many(keys)] == [value.decode()] * len(keys)
        assert sorted(await _keys(store.scan_keys())) == sorted(keys)

    def test_set_many_overwrites_and_indexes_by_cache_lifetime(self, make_store: Any) -> None:
        self._check(make_store, self._set_many_overwrites_and_indexes_by_cache_lifetime)

    async def _set_many_overwrites_and_indexes_by_cache_lifetime(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        key = store.prefix + "1"
        await store.set_many([_write(key, now + 30, b"old")])
        await store.set_many([_write(key, now + 90, b"new"), _write(store.prefix + "2", now + 300)])
        assert _text((await store.get_many([key]))[0]) == "new"
        assert await store.live_count(now) == 2
        assert await _batches(store.expiring(now, now + 60, 100)) == []
        assert await _keys(store.expiring(now, now + 120, 100)) == [key]

    def test_a_ttl_makes_the_value_disappear(self, make_store: Any) -> None:
        self._check(make_store, self._a_ttl_makes_the_value_disappear)

    async def _a_ttl_makes_the_value_disappear(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        await store.set_many([_write(store.prefix + "1", now + 1, ttl=1)])
        deadline = time.monotonic() + 10
        while (await store.get_many([store.prefix + "1"]))[0] is not None:
            assert time.monotonic() < deadline, "a value written with ttl=1 was still there"
            await t.sleep(0.05)

    def test_delete_many_counts_what_existed_and_unindexes(self, make_store: Any) -> None:
        self._check(make_store, self._delete_many_counts_what_existed_and_unindexes)

    async def _delete_many_counts_what_existed_and_unindexes(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        await store.set_many([_write(store.prefix + k, now + 60) for k in ("1", "2", "3")])
        deleted = [store.prefix + "1", store.prefix + "2", store.prefix + "9"]
        assert await store.delete_many(deleted) == 2
        assert await store.delete_many([]) == 0
        assert (await store.get_many([store.prefix + "1", store.prefix + "3"]))[0] is None
        assert await store.live_count(now) == 1
        assert await _keys(store.expiring(now, now + 120, 100)) == [store.prefix + "3"]

    # -- maintenance ------------------------------------------------------------------------

    def test_clear_removes_only_this_prefix(self, make_store: Any) -> None:
        self._check(make_store, self._clear_removes_only_this_prefix)

    async def _clear_removes_only_this_prefix(self, t: _Test) -> None:
        store, other = await t.store(), await t.store(other=True)
        now = int(time.time())
        await store.set_many([_write(store.prefix + str(i), now + 60) for i in range(25)])
        await other.set_many([_write(other.prefix + "1", now + 60)])
        await store.add_counters({"hits": 3})
        assert await store.clear() == 25
        assert await _batches(store.scan_keys()) == []
        assert await store.live_count(now) == 0
        assert await store.read_counters() == {"hits": 3}, "counters are not cache entries"
        assert _text((await other.get_many([other.prefix + "1"]))[0]) == (
            f"value of {other.prefix}1"
        )
        assert await other.live_count(now) == 1
        assert await store.clear() == 0

    def test_scan_keys_leaves_bookkeeping_out_and_batches(self, make_store: Any) -> None:
        self._check(make_store, self._scan_keys_leaves_bookkeeping_out_and_batches)

    async def _scan_keys_leaves_bookkeeping_out_and_batches(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        keys = [store.prefix + str(i) for i in range(23)]
        await store.set_many([_write(key, now + 60) for key in keys])
        await store.add_counters({"hits": 1})
        batches = await _batches(store.scan_keys(count=10))
        assert all(0 < len(batch) <= 10 for batch in batches), [len(b) for b in batches]
        assert sorted(k for batch in batches for k in batch) == sorted(keys)

    def test_live_count_counts_entries_still_cached(self, make_store: Any) -> None:
        self._check(make_store, self._live_count_counts_entries_still_cached)

    async def _live_count_counts_entries_still_cached(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        assert await store.live_count(now) == 0
        await store.set_many(
            [_write(store.prefix + "1", now + 10), _write(store.prefix + "2", now + 50)]
        )
        assert await store.live_count(now) == 2
        assert await store.live_count(now + 10) == 1
        assert await store.live_count(now + 50) == 0

    def test_expiring_yields_each_key_once_in_batches(self, make_store: Any) -> None:
        self._check(make_store, self._expiring_yields_each_key_once_in_batches)

    async def _expiring_yields_each_key_once_in_batches(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        # Many entries sharing one end second straddle every page boundary.
        same = [store.prefix + f"s{i}" for i in range(17)]
        spread = [store.prefix + f"p{i}" for i in range(9)]
        later = store.prefix + "later"
        writes = [_write(k, now + 100) for k in same]
        writes += [_write(k, now + 10 + i) for i, k in enumerate(spread)]
        await store.set_many([*writes, _write(later, now + 1000)])
        batches = await _batches(store.expiring(now, now + 100, 4))
        found = [k for batch in batches for k in batch]
        assert all(0 < len(batch) <= 4 for batch in batches), [len(b) for b in batches]
        assert len(found) == len(set(found)), "a key came twice"
        assert sorted(found) == sorted(same + spread)

    def test_expiring_drops_index_entries_that_ended(self, make_store: Any) -> None:
        self._check(make_store, self._expiring_drops_index_entries_that_ended)

    async def _expiring_drops_index_entries_that_ended(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        await store.set_many(
            [_write(store.prefix + "old", now - 5), _write(store.prefix + "1", now + 5)]
        )
        assert await _keys(store.expiring(now, now + 10, 100)) == [store.prefix + "1"]
        assert await store.live_count(0) == 1, "the ended entry is still indexed"

    def test_renew_never_brings_a_deleted_key_back(self, make_store: Any) -> None:
        self._check(make_store, self._renew_never_brings_a_deleted_key_back)

    async def _renew_never_brings_a_deleted_key_back(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        kept, deleted, gone = (store.prefix + k for k in ("kept", "deleted", "gone"))
        await store.set_many([_write(k, now + 10) for k in (kept, deleted, gone)])
        await store.delete_many([deleted])
        renewed = await store.renew(
            [_write(kept, now + 500, b"renewed"), _write(deleted, now + 500, b"renewed")], [gone]
        )
        assert renewed == 1
        assert [_text(v) for v in await store.get_many([kept, deleted])] == ["renewed", None]
        assert await _keys(store.expiring(now, now + 1000, 100)) == [kept]
        assert await store.renew([], []) == 0

    def test_live_counts_count_what_outlives_each_horizon(self, make_store: Any) -> None:
        self._check(make_store, self._live_counts_count_what_outlives_each_horizon)

    async def _live_counts_count_what_outlives_each_horizon(self, t: _Test) -> None:
        store = await t.store()
        now = int(time.time())
        await store.set_many(
            [_write(store.prefix + str(i), now + left) for i, left in enumerate((5, 60, 60, 400))]
        )
        horizons = [0, 5, 59, 60, 399, 400, 10_000]
        assert await store.live_counts(now, horizons) == [4, 3, 3, 1, 1, 0, 0]
        assert await store.live_counts(now, []) == []

    # -- fleet history ----------------------------------------------------------------------

    def test_history_keeps_the_newest_points_in_time_order(self, make_store: Any) -> None:
        self._check(make_store, self._history_keeps_the_newest_points_in_time_order)

    async def _history_keeps_the_newest_points_in_time_order(self, t: _Test) -> None:
        store = await t.store()
        assert await store.read_history() == []
        if not store.keeps_history:  # the interface's defaults: no history, never elected
            await store.append_history(60, "point", 10)
            assert await store.read_history() == []
            assert await store.try_lock("history:60", "me", 10) is False
            return
        for at in (120, 60, 240, 180):  # out of order, as clocks apart may write them
            await store.append_history(at, f'{{"time":{at}}}', 3)
        assert await store.read_history() == [
            (120, '{"time":120}'),
            (180, '{"time":180}'),
            (240, '{"time":240}'),
        ]
        assert [at for at, _ in await store.read_history(since=180)] == [180, 240]
        assert [at for at, _ in await store.read_history(limit=2)] == [180, 240]
        assert [at for at, _ in await store.read_history(since=100, limit=1)] == [240]
        assert await store.read_history(since=241) == []

    def test_history_survives_clear_and_stays_with_its_prefix(self, make_store: Any) -> None:
        self._check(make_store, self._history_survives_clear_and_stays_with_its_prefix)

    async def _history_survives_clear_and_stays_with_its_prefix(self, t: _Test) -> None:
        store, other = await t.store(), await t.store(other=True)
        if not store.keeps_history:
            return
        now = int(time.time())
        await store.set_many([_write(store.prefix + "1", now + 60)])
        await store.append_history(60, "a point", 10)
        assert await store.clear() == 1
        assert await _batches(store.scan_keys()) == [], "history is bookkeeping, not an entry"
        assert await store.read_history() == [(60, "a point")]
        assert await other.read_history() == []

    def test_a_lock_is_taken_once_and_ends_by_itself(self, make_store: Any) -> None:
        self._check(make_store, self._a_lock_is_taken_once_and_ends_by_itself)

    async def _a_lock_is_taken_once_and_ends_by_itself(self, t: _Test) -> None:
        store, other = await t.store(), await t.store(other=True)
        if not store.keeps_history:
            return
        assert await store.try_lock("history:60", "first", 1) is True
        assert await store.try_lock("history:60", "second", 1) is False
        assert await store.try_lock("history:120", "second", 1) is True
        assert await other.try_lock("history:60", "second", 1) is True, "locks are per prefix"
        assert await _batches(store.scan_keys()) == [], "a lock is bookkeeping, not an entry"
        deadline = time.monotonic() + 10
        while not await store.try_lock("history:60", "second", 1):
            assert time.monotonic() < deadline, "a lock taken for 1 s was still held"
            await t.sleep(0.05)

    # -- counters, memory, channel ----------------------------------------------------------

    def test_counters_add_up_per_prefix(self, make_store: Any) -> None:
        self._check(make_store, self._counters_add_up_per_prefix)

    async def _counters_add_up_per_prefix(self, t: _Test) -> None:
        store, other = await t.store(), await t.store(other=True)
        assert await store.read_counters() == {}
        await store.add_counters({"hits": 2, "misses": 1})
        await store.add_counters({"hits": 5})
        await other.add_counters({"hits": 100})
        assert await store.read_counters() == {"hits": 7, "misses": 1}

    def test_memory_used_and_describe(self, make_store: Any) -> None:
        self._check(make_store, self._memory_used_and_describe)

    async def _memory_used_and_describe(self, t: _Test) -> None:
        store = await t.store()
        used = await store.memory_used()
        assert used is None or (isinstance(used, int) and used > 0)
        assert isinstance(store.describe(), dict)
        assert store.errors and all(issubclass(e, BaseException) for e in store.errors)

    def test_subscribe_confirms_then_receives_what_is_published(self, make_store: Any) -> None:
        self._check(make_store, self._subscribe_confirms_then_receives_what_is_published)

    async def _subscribe_confirms_then_receives_what_is_published(self, t: _Test) -> None:
        store = await t.store()
        subscription = await store.subscribe()
        try:
            assert await self._next(subscription, "subscribed") == ("subscribed", "")
            await store.publish("contract:file_url:1\ncontract:file_url:2")
            assert await self._next(subscription, "message") == (
                "message",
                "contract:file_url:1\ncontract:file_url:2",
            )
            await store.publish("*")
            assert await self._next(subscription, "message") == ("message", "*")
        finally:
            await subscription.close()

    def test_publish_reaches_only_the_same_prefix(self, make_store: Any) -> None:
        self._check(make_store, self._publish_reaches_only_the_same_prefix)

    async def _publish_reaches_only_the_same_prefix(self, t: _Test) -> None:
        store, other = await t.store(), await t.store(other=True)
        subscription = await store.subscribe()
        try:
            await self._next(subscription, "subscribed")
            await other.publish("not for you")
            await store.publish("for you")
            assert await self._next(subscription, "message") == ("message", "for you")
        finally:
            await subscription.close()

    @staticmethod
    async def _next(subscription: object, kind: str) -> tuple[str, str]:
        assert isinstance(subscription, AsyncSubscription)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            event = await subscription.next_event(timeout=0.1)
            if event is not None and event[0] == kind:
                return event
        raise AssertionError(f"no {kind!r} event from the subscription within 10 s")


class SharedStoreContract(_StoreContract):
    """The contract of :class:`~sqla_signed_urls.cache.base.SharedStore`: ``make_store(prefix)``
    returns a sync store."""

    def _check(self, make_store: MakeStore, check: Check) -> None:
        _run_without_loop(check(_SyncTest(self.prefix, make_store)))


class AsyncSharedStoreContract(_StoreContract):
    """The contract of :class:`~sqla_signed_urls.cache.base.AsyncSharedStore`: each test runs
    in an event loop of its own, in which ``make_store(prefix)`` is called; it returns the
    store, a coroutine of it, or an async generator that yields it and then cleans up."""

    def _check(self, make_store: MakeAsyncStore, check: Check) -> None:
        async def run() -> None:
            async with contextlib.AsyncExitStack() as cleanups:
                await check(_AsyncTest(self.prefix, make_store, cleanups))

        asyncio.run(run())
