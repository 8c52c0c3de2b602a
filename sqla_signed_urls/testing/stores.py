"""The contract every shared store keeps, as a reusable test suite.

Subclass :class:`SharedStoreContract` in a test module and give it a ``make_store`` fixture:
a callable that returns a store of yours for a key prefix, on one backend, empty, with the
same prefix always naming the same keys. Every test of the suite then runs against it::

    import pytest
    from sqla_signed_urls.testing import SharedStoreContract

    class TestMyStore(SharedStoreContract):
        @pytest.fixture
        def make_store(self):
            return lambda prefix: MyStore(my_client, prefix)

The suite needs no pytest import of its own, so importing it costs nothing outside tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..cache.base import SharedStore, Write

__all__ = ["SharedStoreContract"]

MakeStore = Callable[[str], SharedStore]

#: Keys a store must hold as they are: the usual layout, namespaces, encoded primary keys.
ODD_KEYS = ("1", "42", "avatar:7", "b0a1f", "2024-01-01T00%3A00%3A00,3", "caf%C3%A9", "x" * 200)


def _write(key: str, until: int, value: bytes | None = None, ttl: int = 600) -> Write:
    return (key, value if value is not None else f"value of {key}".encode(), ttl, until)


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


class SharedStoreContract:
    """Behaviour the read path and ``CacheService`` rely on, one test per promise."""

    prefix = "contract:file_url:"

    def _store(self, make_store: MakeStore, other: bool = False) -> SharedStore:
        # The other prefix is a sibling, not an extension: "a:" would cover "a:b:" keys.
        prefix = self.prefix.rstrip(":") + "_other:" if other else self.prefix
        store = make_store(prefix)
        assert isinstance(store, SharedStore), f"make_store gave {type(store).__name__}"
        assert store.prefix == prefix, "store.prefix must be the prefix given"
        return store

    # -- reads and writes -------------------------------------------------------------------

    def test_get_many_answers_in_order_with_none_for_missing(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        store.set_many([_write(store.prefix + "1", now + 60), _write(store.prefix + "3", now + 60)])
        keys = [store.prefix + k for k in ("1", "2", "3")]
        assert [_text(v) for v in store.get_many(keys)] == [
            f"value of {keys[0]}",
            None,
            f"value of {keys[2]}",
        ]
        assert [_text(v) for v in store.get_many(keys[:1])] == [f"value of {keys[0]}"]

    def test_values_and_keys_round_trip_as_they_are(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        value = "1764205200 1764193500 9f2c4e1a https://h/%E2%9C%93?x=1 café ✓.png".encode()
        keys = [store.prefix + k for k in ODD_KEYS]
        store.set_many([_write(key, now + 60, value) for key in keys])
        assert [_text(v) for v in store.get_many(keys)] == [value.decode()] * len(keys)
        assert sorted(k for batch in store.scan_keys() for k in batch) == sorted(keys)

    def test_set_many_overwrites_and_indexes_by_cache_lifetime(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        key = store.prefix + "1"
        store.set_many([_write(key, now + 30, b"old")])
        store.set_many([_write(key, now + 90, b"new"), _write(store.prefix + "2", now + 300)])
        assert _text(store.get_many([key])[0]) == "new"
        assert store.live_count(now) == 2
        assert list(store.expiring(now, now + 60, 100)) == []
        assert [k for batch in store.expiring(now, now + 120, 100) for k in batch] == [key]

    def test_a_ttl_makes_the_value_disappear(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        store.set_many([_write(store.prefix + "1", now + 1, ttl=1)])
        deadline = time.monotonic() + 10
        while store.get_many([store.prefix + "1"])[0] is not None:
            assert time.monotonic() < deadline, "a value written with ttl=1 was still there"
            time.sleep(0.05)

    def test_delete_many_counts_what_existed_and_unindexes(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        store.set_many([_write(store.prefix + k, now + 60) for k in ("1", "2", "3")])
        assert store.delete_many([store.prefix + "1", store.prefix + "2", store.prefix + "9"]) == 2
        assert store.delete_many([]) == 0
        assert store.get_many([store.prefix + "1", store.prefix + "3"])[0] is None
        assert store.live_count(now) == 1
        assert [k for b in store.expiring(now, now + 120, 100) for k in b] == [store.prefix + "3"]

    # -- maintenance ------------------------------------------------------------------------

    def test_clear_removes_only_this_prefix(self, make_store: MakeStore) -> None:
        store, other = self._store(make_store), self._store(make_store, other=True)
        now = int(time.time())
        store.set_many([_write(store.prefix + str(i), now + 60) for i in range(25)])
        other.set_many([_write(other.prefix + "1", now + 60)])
        store.add_counters({"hits": 3})
        assert store.clear() == 25
        assert list(store.scan_keys()) == []
        assert store.live_count(now) == 0
        assert store.read_counters() == {"hits": 3}, "counters are not cache entries"
        assert _text(other.get_many([other.prefix + "1"])[0]) == f"value of {other.prefix}1"
        assert other.live_count(now) == 1
        assert store.clear() == 0

    def test_scan_keys_leaves_bookkeeping_out_and_batches(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        keys = [store.prefix + str(i) for i in range(23)]
        store.set_many([_write(key, now + 60) for key in keys])
        store.add_counters({"hits": 1})
        batches = list(store.scan_keys(count=10))
        assert all(0 < len(batch) <= 10 for batch in batches), [len(b) for b in batches]
        assert sorted(k for batch in batches for k in batch) == sorted(keys)

    def test_live_count_counts_entries_still_cached(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        assert store.live_count(now) == 0
        store.set_many([_write(store.prefix + "1", now + 10), _write(store.prefix + "2", now + 50)])
        assert store.live_count(now) == 2
        assert store.live_count(now + 10) == 1
        assert store.live_count(now + 50) == 0

    def test_expiring_yields_each_key_once_in_batches(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        # Many entries sharing one end second straddle every page boundary.
        same = [store.prefix + f"s{i}" for i in range(17)]
        spread = [store.prefix + f"p{i}" for i in range(9)]
        later = store.prefix + "later"
        writes = [_write(k, now + 100) for k in same]
        writes += [_write(k, now + 10 + i) for i, k in enumerate(spread)]
        store.set_many([*writes, _write(later, now + 1000)])
        batches = list(store.expiring(now, now + 100, 4))
        found = [k for batch in batches for k in batch]
        assert all(0 < len(batch) <= 4 for batch in batches), [len(b) for b in batches]
        assert len(found) == len(set(found)), "a key came twice"
        assert sorted(found) == sorted(same + spread)

    def test_expiring_drops_index_entries_that_ended(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        store.set_many([_write(store.prefix + "old", now - 5), _write(store.prefix + "1", now + 5)])
        assert [k for b in store.expiring(now, now + 10, 100) for k in b] == [store.prefix + "1"]
        assert store.live_count(0) == 1, "the ended entry is still indexed"

    def test_renew_never_brings_a_deleted_key_back(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        now = int(time.time())
        kept, deleted, gone = (store.prefix + k for k in ("kept", "deleted", "gone"))
        store.set_many([_write(k, now + 10) for k in (kept, deleted, gone)])
        store.delete_many([deleted])
        renewed = store.renew(
            [_write(kept, now + 500, b"renewed"), _write(deleted, now + 500, b"renewed")], [gone]
        )
        assert renewed == 1
        assert [_text(v) for v in store.get_many([kept, deleted])] == ["renewed", None]
        assert [k for b in store.expiring(now, now + 1000, 100) for k in b] == [kept]
        assert store.renew([], []) == 0

    # -- counters, memory, channel ----------------------------------------------------------

    def test_counters_add_up_per_prefix(self, make_store: MakeStore) -> None:
        store, other = self._store(make_store), self._store(make_store, other=True)
        assert store.read_counters() == {}
        store.add_counters({"hits": 2, "misses": 1})
        store.add_counters({"hits": 5})
        other.add_counters({"hits": 100})
        assert store.read_counters() == {"hits": 7, "misses": 1}

    def test_memory_used_and_describe(self, make_store: MakeStore) -> None:
        store = self._store(make_store)
        used = store.memory_used()
        assert used is None or (isinstance(used, int) and used > 0)
        assert isinstance(store.describe(), dict)
        assert store.errors and all(issubclass(e, BaseException) for e in store.errors)

    def test_subscribe_confirms_then_receives_what_is_published(
        self, make_store: MakeStore
    ) -> None:
        store = self._store(make_store)
        subscription = store.subscribe()
        try:
            assert self._next(subscription, "subscribed") == ("subscribed", "")
            store.publish("contract:file_url:1\ncontract:file_url:2")
            assert self._next(subscription, "message") == (
                "message",
                "contract:file_url:1\ncontract:file_url:2",
            )
            store.publish("*")
            assert self._next(subscription, "message") == ("message", "*")
        finally:
            subscription.close()

    def test_publish_reaches_only_the_same_prefix(self, make_store: MakeStore) -> None:
        store, other = self._store(make_store), self._store(make_store, other=True)
        subscription = store.subscribe()
        try:
            self._next(subscription, "subscribed")
            other.publish("not for you")
            store.publish("for you")
            assert self._next(subscription, "message") == ("message", "for you")
        finally:
            subscription.close()

    @staticmethod
    def _next(subscription: object, kind: str) -> tuple[str, str]:
        from ..cache.base import Subscription

        assert isinstance(subscription, Subscription)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            event = subscription.next_event(timeout=0.1)
            if event is not None and event[0] == kind:
                return event
        raise AssertionError(f"no {kind!r} event from the subscription within 10 s")
