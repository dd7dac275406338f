"""The broker interface: publish to a channel, subscribe to channels, receive messages.

Exception tree::

    BrokerError            publishing or subscribing failed (broker unreachable, closed)

Delivery is at-most-once, as Redis pub/sub is: a subscriber can miss messages. The broker says
so whenever it knows it may have happened (a lost connection, a reconnect) by putting a
:class:`Gap` into every affected subscription; callers repair from their own durable store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class BrokerError(Exception):
    """Publishing or subscribing failed: the broker is unreachable or closed."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message received on a channel."""

    channel: str
    data: str


@dataclass(frozen=True, slots=True)
class Gap:
    """The broker may have dropped messages for this subscription's channels."""

    reason: str


Received = Message | Gap


@runtime_checkable
class SubscriptionLike(Protocol):
    """What a subscriber reads from: a bounded queue of messages and gaps."""

    @property
    def channels(self) -> frozenset[str]:
        """The channels this subscription receives from."""
        ...

    @property
    def overflowed(self) -> bool:
        """Whether a message was dropped because the queue was full."""
        ...

    async def get(self) -> Received:
        """Wait for the next message or gap."""
        ...

    def put_gap(self, gap: Gap) -> None:
        """Queue ``gap`` (even when full): tells the reader it may have missed messages."""
        ...

    def get_nowait(self) -> Received | None:
        """The next message or gap, or None when none is queued."""
        ...

    def __aiter__(self) -> AsyncIterator[Received]:
        """Iterate over messages and gaps as they arrive."""
        ...


@runtime_checkable
class Broker(Protocol):
    """A pub/sub broker: in-memory for one process, Redis for many."""

    @property
    def connected(self) -> bool:
        """Whether the transport to the broker is up right now."""
        ...

    async def connect(self) -> None:
        """Open connections and start background readers."""
        ...

    async def disconnect(self) -> None:
        """Stop background readers and close connections; idempotent."""
        ...

    async def publish(self, channel: str, data: str) -> None:
        """Publish ``data`` to ``channel``; raises BrokerError if it cannot be handed over."""
        ...

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        """Publish (channel, data) pairs in order, in one round trip where the broker allows."""
        ...

    def subscribe(
        self, *channels: str, maxsize: int = 256
    ) -> AbstractAsyncContextManager[SubscriptionLike]:
        """Subscribe to channels; active (confirmed by the broker, when reachable) on enter."""
        ...
