"""The per-gateway rate limit on status calls, shared by every process (the ``limits`` library).

With REDIS_URL the budget lives in Redis (a moving window per gateway), so any number of web
and reconciler processes together stay under it; on the embedded default it lives in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import redis.asyncio as redis
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from orders.metrics import Metrics

logger = logging.getLogger(__name__)


def parse_rate(text: str) -> RateLimitItem:
    """A rate such as ``100/second`` or ``600 per minute``; ValueError if it is not one."""
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"expected a rate such as 100/second, got {text!r}") from exc


class GatewayRateLimiter:
    """Calls per gateway, counted in one shared window; ``acquire`` waits for a slot."""

    def __init__(
        self,
        rates: Mapping[str, str],
        *,
        redis_url: str | None,
        prefix: str,
        metrics: Metrics,
    ) -> None:
        self._rates = {gateway: parse_rate(rate) for gateway, rate in rates.items() if rate}
        storage: Storage
        self._pool: redis.ConnectionPool | None = None
        if redis_url:
            # Our own pool, so that closing the limiter closes its connections.
            self._pool = redis.ConnectionPool.from_url(redis_url)
            storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=prefix + "ratelimit",
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        self._prefix = prefix
        self._metrics = metrics

    async def aclose(self) -> None:
        """Close the Redis connections (if any)."""
        if self._pool is not None:
            await self._pool.disconnect()

    async def __aenter__(self) -> GatewayRateLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def acquire(self, gateway: str, *, wait: bool) -> bool:
        """Take one call of ``gateway``'s budget; with ``wait``, sleep until there is one."""
        item = self._rates.get(gateway)
        if item is None:
            return True
        while True:
            if await self._limiter.hit(item, self._prefix, gateway):
                return True
            self._metrics.rate_limit_waits.labels(gateway=gateway).inc()
            if not wait:
                return False
            stats = await self._limiter.get_window_stats(item, self._prefix, gateway)
            # The window frees its oldest hit at reset_time; a little more spreads the herd.
            await asyncio.sleep(max(0.01, min(1.0, stats.reset_time - time.time())))
