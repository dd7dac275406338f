"""A reconciler process of the test's own, beside the service under test, on its database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateways.base import Gateway, PaymentRequest, PaymentStart, PaymentState
from orders.metrics import Metrics
from orders.settlement import Settlement
from reconciler.worker import Reconciler
from server.gatewaying import open_gateways
from server.ratelimit import GatewayRateLimiter
from tests.conftest import Service

#: PhonePe's schedule shape, compressed: seconds instead of minutes.
FAST_SCHEDULE = "first=0.1 0.2x2 0.4x2 then=0.5 timeout=4 tail=0.5x2,1 horizon=20"


@dataclass
class Recording:
    """Status calls a reconciler made: (gateway ref, start, end) on the monotonic clock."""

    calls: list[tuple[str, float, float]] = field(default_factory=list)


class RecordingGateway:
    """A real adapter, with each status call timed (and slowed, so overlaps would show)."""

    def __init__(self, inner: Gateway, recording: Recording, *, slow: float = 0.0) -> None:
        self._inner = inner
        self._recording = recording
        self._slow = slow
        self.name = inner.name

    async def start_payment(self, request: PaymentRequest) -> PaymentStart:
        return await self._inner.start_payment(request)

    async def fetch_status(self, ref: str) -> PaymentState:
        started = time.monotonic()
        try:
            await asyncio.sleep(self._slow)
            return await self._inner.fetch_status(ref)
        finally:
            self._recording.calls.append((ref, started, time.monotonic()))

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> Any:
        return self._inner.verify_webhook(headers, raw_body)

    async def refund(self, request: Any) -> Any:
        return await self._inner.refund(request)

    async def fetch_refund(self, reference: str, *, refund_ref: str | None = None) -> Any:
        return await self._inner.fetch_refund(reference, refund_ref=refund_ref)


@contextlib.asynccontextmanager
async def reconciler_for(
    service: Service,
    *,
    recording: Recording | None = None,
    slow: float = 0.0,
    name: str = "test-reconciler",
    batch: int = 100,
    **overrides: Any,
) -> AsyncIterator[Reconciler]:
    """A reconciler as ``python -m reconciler`` builds it, on the service's database."""
    settings = replace(service.settings, **overrides)
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        offered = await stack.enter_async_context(open_gateways(settings))
        gateways: dict[str, Gateway] = dict(offered.gateways)
        if recording is not None:
            gateways = {n: RecordingGateway(g, recording, slow=slow) for n, g in gateways.items()}
        settlement = Settlement(
            service.db,
            service.publisher,
            metrics,
            gateways=gateways,
            schedules=offered.schedules,
            limiter=await stack.enter_async_context(
                GatewayRateLimiter(
                    {n: settings.rate_limit(n) for n in gateways},
                    redis_url=settings.redis_url,
                    prefix=settings.redis_channel_prefix,
                    metrics=metrics,
                )
            ),
        )
        yield Reconciler(settlement, interval=0.05, lease=5, name=name, batch=batch)


async def drive(
    reconciler: Reconciler, done: Callable[[], Awaitable[bool]], *, timeout: float = 20.0
) -> None:
    """Run reconciler passes until ``done()`` is true (TimeoutError after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not await done():
            await reconciler.run_once()
            await asyncio.sleep(0.05)
