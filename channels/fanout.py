"""The channel → subscriptions registry and the bounded per-subscription queue of both brokers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, KeysView

from channels.base import Gap, Message, Received

#: The gap put into a subscription the first time it drops a message.
OVERFLOW = Gap("overflow")


class Subscription:
    """A bounded queue of the messages and gaps received on a set of channels."""

    # A process holds one per WebSocket connection (10,000+), hence slots, one list and at most
    # one waiter future instead of an asyncio.Queue with its three deques and counters. A list,
    # not a deque: an empty deque costs ~600 bytes, an empty list 56, and pop(0) on a queue
    # bounded at a few hundred items is a short memmove.
    __slots__ = ("_channels", "_items", "_maxsize", "_overflowed", "_waiter")

    def __init__(self, channels: Iterable[str], *, maxsize: int = 256) -> None:
        """Create an empty subscription to ``channels`` holding at most ``maxsize`` messages."""
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self._channels = frozenset(channels)
        self._maxsize = maxsize
        self._items: list[Received] = []
        self._overflowed = False
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<Subscription channels={sorted(self._channels)!r} queued={len(self._items)}"
            f"/{self._maxsize} overflowed={self._overflowed}>"
        )

    @property
    def channels(self) -> frozenset[str]:
        """The channels this subscription receives from."""
        return self._channels

    @property
    def maxsize(self) -> int:
        """How many messages the queue holds before it drops new ones."""
        return self._maxsize

    @property
    def overflowed(self) -> bool:
        """Whether a message was ever dropped because the queue was full; it stays True."""
        return self._overflowed

    def __len__(self) -> int:
        """How many items are queued."""
        return len(self._items)

    def put_nowait(self, message: Message) -> bool:
        """Queue ``message``; when full, drop it, flag ``overflowed`` and return False."""
        items = self._items
        if len(items) >= self._maxsize:
            if not self._overflowed:
                self._overflowed = True
                # One gap past the bound, so a reader that only looks at items still learns it
                # missed something.
                self.put_gap(OVERFLOW)
            return False
        items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def put_gap(self, gap: Gap) -> None:
        """Queue ``gap`` even when full; a gap right behind another gap adds nothing."""
        items = self._items
        # Consecutive gaps mean the same thing to the reader, so the queue never exceeds
        # maxsize + 1 however many reconnects happen while nobody reads.
        if items and isinstance(items[-1], Gap):
            return
        items.append(gap)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Received | None:
        """Return the next item, or None when the queue is empty."""
        items = self._items
        return items.pop(0) if items else None

    async def get(self) -> Received:
        """Wait for the next item and return it."""
        items = self._items
        while not items:
            if self._waiter is not None:
                raise RuntimeError("Subscription.get() is already being awaited by another task")
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        return items.pop(0)

    def __aiter__(self) -> AsyncIterator[Received]:
        """Iterate over items as they arrive, forever."""
        return self

    async def __anext__(self) -> Received:
        """Wait for the next item."""
        return await self.get()


class Fanout:
    """Which subscriptions listen on which channel, and delivery into them."""

    __slots__ = ("_by_channel", "_subscriptions")

    def __init__(self) -> None:
        """Create an empty registry."""
        self._by_channel: dict[str, set[Subscription]] = {}
        self._subscriptions: set[Subscription] = set()

    @property
    def channels(self) -> KeysView[str]:
        """Every channel with at least one subscription (a live view)."""
        return self._by_channel.keys()

    def __contains__(self, channel: object) -> bool:
        """Whether ``channel`` has at least one subscription."""
        return channel in self._by_channel

    def __len__(self) -> int:
        """How many subscriptions are registered."""
        return len(self._subscriptions)

    def add(self, subscription: Subscription) -> list[str]:
        """Register ``subscription``; return the channels that had no subscription before."""
        if subscription in self._subscriptions:
            return []
        self._subscriptions.add(subscription)
        newly_used: list[str] = []
        by_channel = self._by_channel
        for channel in subscription.channels:
            subscribers = by_channel.get(channel)
            if subscribers is None:
                by_channel[channel] = {subscription}
                newly_used.append(channel)
            else:
                subscribers.add(subscription)
        return newly_used

    def remove(self, subscription: Subscription) -> list[str]:
        """Unregister ``subscription``; return the channels that now have no subscription."""
        if subscription not in self._subscriptions:
            return []
        self._subscriptions.discard(subscription)
        unused: list[str] = []
        by_channel = self._by_channel
        for channel in subscription.channels:
            subscribers = by_channel.get(channel)
            if subscribers is None:
                continue
            subscribers.discard(subscription)
            if not subscribers:
                del by_channel[channel]
                unused.append(channel)
        return unused

    def deliver(self, channel: str, data: str) -> int:
        """Offer a Message to every subscription of ``channel``; return how many there were."""
        subscribers = self._by_channel.get(channel)
        if not subscribers:
            return 0
        # Message is frozen, so all subscribers can share one instance.
        message = Message(channel, data)
        for subscription in subscribers:
            subscription.put_nowait(message)
        return len(subscribers)

    def gap_channels(self, channels: Iterable[str], reason: str) -> None:
        """Queue ``Gap(reason)`` in every subscription of any of ``channels`` (once each)."""
        gap = Gap(reason)
        by_channel = self._by_channel
        affected: set[Subscription] = set()
        for channel in channels:
            affected.update(by_channel.get(channel, ()))
        for subscription in affected:
            subscription.put_gap(gap)

    def gap_all(self, reason: str) -> None:
        """Queue ``Gap(reason)`` in every registered subscription."""
        gap = Gap(reason)
        for subscription in self._subscriptions:
            subscription.put_gap(gap)
