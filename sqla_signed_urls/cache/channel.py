"""The invalidation channel: keeps this process's in-process layer (L1) in step with every
other process sharing the store, and runs the periodic counter flush and the fleet history
(:mod:`..history`) beside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from ..history import HistoryRecorder
from .base import SharedStore, Subscription
from .local import LocalCache

__all__ = ["InvalidationChannel"]

log = logging.getLogger("sqla_signed_urls")


class InvalidationChannel:
    """Subscribes to invalidations in a background thread; the L1 is trusted only while that
    subscription is confirmed (:attr:`live`).

    While it is not subscribed the L1 is neither read nor filled; each (re)subscription starts
    from an empty L1, so nothing published during an outage is missed. Invalidations that could
    not be sent (:meth:`defer`) are sent again once the store answers::

        channel = InvalidationChannel(store, LocalCache(10_000), retry_after=5.0,
                                      socket_timeout=0.25, tick=flush_counters)
        channel.ensure_started()        # on the first store call
        channel.live                    # True once the server confirmed the subscription

    After each ``tick`` the thread gives ``history`` (a
    :class:`~sqla_signed_urls.history.HistoryRecorder`, ``None`` for no history) its turn.
    """

    #: Seconds between two calls of ``tick`` (the counter flush).
    TICK_EVERY = 1.0

    def __init__(
        self,
        store: SharedStore,
        local: LocalCache | None,
        *,
        retry_after: float,
        socket_timeout: float,
        tick: Callable[[], None],
        history: HistoryRecorder | None = None,
    ) -> None:
        self.store = store
        self.local = local
        self.retry_after = retry_after
        self.socket_timeout = socket_timeout
        self._tick = tick
        #: Records the fleet history after each tick (``None``: no history from here).
        self.history = history
        #: Whether the L1 may be read and filled: the subscription is confirmed.
        self.live = False
        self._unsent: set[str] = set()
        self._listener: _Listener | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the background thread unless it runs (cheap: called on every store call)."""
        if self._listener is not None:
            return
        with self._lock:
            if self._listener is None:
                self._listener = _Listener(self)
                self._listener.start()

    def lost(self) -> None:
        """The store failed: stop trusting the L1 and resubscribe as soon as it answers."""
        self.suspend()
        listener = self._listener
        if listener is not None:
            listener.reconnect.set()

    def suspend(self) -> None:
        """Stop reading and filling the L1, and empty it."""
        self.live = False
        if self.local is not None:
            self.local.clear()

    def defer(self, keys: Iterable[str]) -> None:
        """Invalidations the store could not take now: sent again on resubscription."""
        self._unsent.update(keys)

    @property
    def unsent(self) -> frozenset[str]:
        """Keys whose invalidation waits for the store to answer again."""
        return frozenset(self._unsent)

    def stop(self) -> None:
        """Stop the thread (it calls ``tick`` a last time) and empty the L1."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        self.suspend()

    def forked(self) -> None:
        """In a forked child: the parent's thread is gone and its locks may be held."""
        self._listener = None
        self._lock = threading.Lock()
        self.suspend()
        if self.history is not None:
            self.history.forked()

    def _record_history(self) -> None:
        """The history's turn, after a tick. A fault here is the store's (the flush just
        before reports those) or a bug; neither may stop the channel."""
        history = self.history
        if history is None:
            return
        try:
            history.tick(self.store)
        except Exception as exc:
            log.debug("could not record the cache history: %s", type(exc).__name__)

    def deliver(self, text: str) -> None:
        """Apply one published message: ``*`` empties the L1, else newline-separated keys."""
        if self.local is None:
            return
        if text == "*":
            self.local.clear()
        else:
            self.local.discard(text.split("\n"))

    def _resend(self) -> None:
        if not self._unsent:
            return
        keys = sorted(self._unsent)
        self.store.delete_many(keys)
        self.store.publish("\n".join(keys))
        self._unsent.difference_update(keys)


class _Listener(threading.Thread):
    def __init__(self, channel: InvalidationChannel) -> None:
        super().__init__(name="sqla-signed-urls", daemon=True)
        self.channel = channel
        self.stopping = threading.Event()
        self.reconnect = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)

    def run(self) -> None:
        channel = self.channel
        while not self.stopping.is_set():
            try:
                self._session(channel)
            except Exception as exc:
                channel.suspend()
                log.debug("invalidation listener stopped: %s", type(exc).__name__)
            self.stopping.wait(channel.retry_after)
        try:
            channel._tick()
        except Exception:
            log.debug("could not flush counters at close")

    def _session(self, channel: InvalidationChannel) -> None:
        subscription = channel.store.subscribe()
        try:
            self._confirm(subscription, channel.socket_timeout)
            self.reconnect.clear()
            channel.suspend()  # start from an empty L1, then trust it
            channel.live = True
            channel._resend()
            next_tick = time.monotonic() + channel.TICK_EVERY
            while not self.stopping.is_set() and not self.reconnect.is_set():
                event = subscription.next_event(timeout=0.2)
                if event is not None:
                    kind, text = event
                    if kind == "message":
                        channel.deliver(text)
                    elif kind == "subscribed" and channel.local is not None:
                        # the client lost the connection and subscribed again by itself: what
                        # was published in between is lost, so the L1 starts over
                        channel.local.clear()
                if time.monotonic() >= next_tick:
                    channel._tick()
                    channel._record_history()
                    next_tick = time.monotonic() + channel.TICK_EVERY
        finally:
            channel.live = False
            subscription.close()

    @staticmethod
    def _confirm(subscription: Subscription, socket_timeout: float) -> None:
        """The L1 may only be trusted once the server has confirmed the subscription."""
        deadline = time.monotonic() + max(1.0, socket_timeout * 4)
        while True:
            event = subscription.next_event(timeout=socket_timeout)
            if event is not None and event[0] == "subscribed":
                return
            if time.monotonic() > deadline:
                raise TimeoutError("no confirmation of the invalidation subscription")
