"""A small pub/sub broker behind one interface: in-memory for one process, Redis for many.

It knows nothing of orders. Delivery is at-most-once; a :class:`Gap` in a subscription says
messages may have been missed, and the caller repairs from its own durable log. Gap reasons:
``"reconnected"`` (the Redis pub/sub connection was re-established — on a cluster, only for
the channels of the shard whose connection it was), ``"moved"`` (a cluster slot moved to
another master, by failover or resharding, and its channels were subscribed there), ``"late
subscribe"`` (Redis
confirmed the subscription only after ``subscribe()`` stopped waiting) and ``"overflow"`` (the
subscription was full and dropped a message; ``overflowed`` is then True for good).

Exception tree::

    BrokerError            publishing failed: the broker is unreachable or closed
"""

from __future__ import annotations

from typing import Any

from channels.base import Broker, BrokerError, Gap, Message
from channels.fanout import Subscription
from channels.heartbeat import Heartbeat

__all__ = [
    "Broker",
    "BrokerError",
    "Gap",
    "Heartbeat",
    "Message",
    "Subscription",
    "create_broker",
]

_SCHEMES = "memory://, redis:// or rediss:// (redis+cluster:// or rediss+cluster:// for a cluster)"


def create_broker(url: str | None, **options: Any) -> Broker:
    """Build the broker for ``url``: unset or memory:// in-process, redis:// or rediss:// one
    Redis, redis+cluster:// or rediss+cluster:// a Redis Cluster (sharded pub/sub)."""
    if not url or url == "memory://":
        from channels.memory import MemoryBroker

        return MemoryBroker(**options)
    scheme, separator, _ = url.partition("://")
    if not separator:
        # The URL itself is not echoed: it may carry a password.
        raise ValueError(f"broker URL has no scheme: expected {_SCHEMES}")
    if scheme.lower() in ("redis", "rediss"):
        from channels.redis import RedisBroker

        return RedisBroker(url, **options)
    if scheme.lower() in ("redis+cluster", "rediss+cluster"):
        from channels.cluster import ClusterBroker

        return ClusterBroker(url, **options)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}: expected {_SCHEMES}")
