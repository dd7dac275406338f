"""The per-gateway rate limit on status calls, shared by every process, as paced calls (GCRA).

With REDIS_URL the pace lives in Redis (one theoretical-arrival time per gateway, moved by an
atomic Lua script of ``pyrate-limiter``), so any number of web and reconciler processes together
stay under it; on the embedded default it lives in memory.

Why pacing rather than a moving window: a window of ``N`` hits per second, counted when the hit
is taken, lets ``N`` calls out at once and refills in the same bursts; the gateway counts calls
when they *arrive*, a varying moment later, so two bursts a second apart drift into one of its
sliding seconds (measured: 105-107 arrivals in a sliding second at a limit of 100,
docs/benchmarks.md). Paced calls — at most one every ``(1 + HEADROOM) / N`` seconds — can only
overshoot if the delay between taking a slot and arriving varies by more than ``HEADROOM``
seconds' worth of slots (50 ms at the default).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as redis
from pyrate_limiter import GCRA, InMemoryStateStore, Rate, RedisStateStore, StateStore

from orders.metrics import Metrics

logger = logging.getLogger(__name__)

#: Slots are spaced this much wider than ``1 / N``: the margin that absorbs the varying delay
#: between taking a slot and the call reaching the gateway (HTTP pool, a busy event loop).
HEADROOM = 0.05

_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(
    r"^\s*(\d+)\s*(?:/|per)\s*(\d+)?\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE
)
_ALGORITHM = GCRA()


@dataclass(frozen=True, slots=True)
class GatewayRate:
    """``amount`` calls per ``seconds``, as written in ``<GATEWAY>_RATE_LIMIT``."""

    amount: int
    seconds: float

    def paced(self) -> Rate:
        """The GCRA rate: one call per slot of ``(1 + HEADROOM) * seconds / amount``, no burst."""
        return Rate(self.amount, math.ceil(self.seconds * 1000 * (1 + HEADROOM)), burst=1)


def parse_rate(text: str) -> GatewayRate:
    """A rate such as ``100/second``, ``600 per minute`` or ``5/2 seconds``; ValueError if not."""
    match = _RATE.match(text)
    if match is None or int(match.group(1)) < 1 or match.group(2) == "0":
        raise ValueError(f"expected a rate such as 100/second, got {text!r}")
    count, multiple, unit = match.groups()
    return GatewayRate(int(count), int(multiple or 1) * _UNITS[unit.lower()])


class GatewayRateLimiter:
    """Calls per gateway, paced through one shared state; ``acquire`` waits for a slot."""

    def __init__(
        self,
        rates: Mapping[str, str],
        *,
        redis_url: str | None,
        prefix: str,
        metrics: Metrics,
    ) -> None:
        self._rates = {name: [parse_rate(rate).paced()] for name, rate in rates.items() if rate}
        self._pool: redis.ConnectionPool | None = None
        self._stores: dict[str, StateStore] = {}
        if redis_url:
            # Our own pool, so that closing the limiter closes its connections.
            self._pool = redis.ConnectionPool.from_url(redis_url)
            client = redis.Redis(connection_pool=self._pool)
            for gateway in self._rates:
                self._stores[gateway] = RedisStateStore(client, f"{prefix}ratelimit:{gateway}")
        else:
            for gateway in self._rates:
                self._stores[gateway] = InMemoryStateStore()
        # One waiter per gateway per process polls the shared store at a time; the others queue
        # here, so waiting costs one Redis call per slot and process, not one per waiter.
        self._turns = {gateway: asyncio.Lock() for gateway in self._rates}
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
        rates = self._rates.get(gateway)
        if rates is None:
            return True
        turn = self._turns[gateway]
        # Nobody queued here: take a free slot straight away (concurrent takers are fine, the
        # store is atomic). With a queue, a newcomer goes to its back instead of stealing.
        if not turn.locked() and await self._try(gateway, rates) is None:
            return True
        self._metrics.rate_limit_waits.labels(gateway=gateway).inc()
        if not wait:
            return False
        async with turn:
            while True:
                retry_ms = await self._try(gateway, rates)
                if retry_ms is None:
                    return True
                # The store names the moment the next slot opens: sleep until then.
                await asyncio.sleep(max(retry_ms, 1) / 1000)

    async def _try(self, gateway: str, rates: list[Rate]) -> int | None:
        """One atomic check-and-take: None if taken, else milliseconds until the next slot."""
        # Wall-clock milliseconds: the state is shared by processes (and hosts, NTP-synced).
        checked = self._stores[gateway].check(_ALGORITHM, rates, time.time_ns() // 1_000_000, 1)
        decision = await checked if inspect.isawaitable(checked) else checked
        if decision.allowed:
            return None
        return decision.retry_after_ms if decision.retry_after_ms is not None else 1
