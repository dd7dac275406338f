"""MemoryBroker: publish and subscribe inside one process, with Redis pub/sub's semantics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from channels.base import BrokerError
from channels.fanout import Fanout, Subscription


class MemoryBroker:
    """An in-process broker: publish hands a message to the local subscriptions at once."""

    def __init__(self) -> None:
        """Create a broker; nothing is delivered until :meth:`connect`."""
        self._fanout = Fanout()
        self._connected = False

    def __repr__(self) -> str:
        return f"<MemoryBroker connected={self._connected} subscriptions={len(self._fanout)}>"

    @property
    def connected(self) -> bool:
        """Whether the broker is between connect() and disconnect()."""
        return self._connected

    async def connect(self) -> None:
        """Start accepting publishes."""
        self._connected = True

    async def disconnect(self) -> None:
        """Stop accepting publishes; open subscriptions receive nothing more. Idempotent."""
        self._connected = False

    async def publish(self, channel: str, data: str) -> None:
        """Deliver ``data`` to the subscriptions of ``channel`` now; BrokerError when closed."""
        if not self._connected:
            raise BrokerError("memory broker is not connected")
        # At-most-once like Redis: a full subscription drops the message and flags overflow.
        self._fanout.deliver(channel, data)

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        """Deliver each (channel, data) pair in order; BrokerError when closed."""
        if not self._connected:
            raise BrokerError("memory broker is not connected")
        for channel, data in messages:
            self._fanout.deliver(channel, data)

    def subscribe(
        self, *channels: str, maxsize: int = 256
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to ``channels`` for the duration of an ``async with`` block."""
        if not channels:
            raise ValueError("subscribe() needs at least one channel")
        return self._subscription(Subscription(channels, maxsize=maxsize))

    @asynccontextmanager
    async def _subscription(self, subscription: Subscription) -> AsyncIterator[Subscription]:
        self._fanout.add(subscription)
        try:
            yield subscription
        finally:
            self._fanout.remove(subscription)
