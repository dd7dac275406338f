"""Heartbeat: prove the broker delivers, not merely answers, by receiving what we publish."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import AsyncExitStack
from types import TracebackType

from channels.base import Broker, Message, SubscriptionLike

logger = logging.getLogger(__name__)


class Heartbeat:
    """Publish to a private channel every ``interval`` and watch for it to come back."""

    def __init__(
        self,
        broker: Broker,
        *,
        channel: str | None = None,
        interval: float = 1.0,
        stale_after: float = 3.0,
    ) -> None:
        """Create a heartbeat on ``broker``; it runs between start() and stop()."""
        if interval <= 0 or stale_after <= 0:
            raise ValueError("interval and stale_after must be positive")
        self._broker = broker
        self._channel = channel if channel is not None else f"_heartbeat:{uuid.uuid4().hex}"
        self._interval = interval
        self._stale_after = stale_after
        self._last_received: float | None = None
        self._stack: AsyncExitStack | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<Heartbeat channel={self._channel!r} delivering={self.delivering}>"

    @property
    def channel(self) -> str:
        """The channel the heartbeat is published on."""
        return self._channel

    @property
    def last_received_age(self) -> float | None:
        """Seconds since a heartbeat last came back, or None if none ever did."""
        if self._last_received is None:
            return None
        return time.monotonic() - self._last_received

    @property
    def delivering(self) -> bool:
        """Whether a heartbeat came back through the broker within ``stale_after`` seconds."""
        age = self.last_received_age
        return age is not None and age <= self._stale_after

    async def start(self) -> None:
        """Subscribe to the heartbeat channel and start beating; idempotent."""
        if self._stack is not None:
            return
        stack = AsyncExitStack()
        subscription = await stack.enter_async_context(
            self._broker.subscribe(self._channel, maxsize=16)
        )
        self._stack = stack
        self._tasks = [
            asyncio.create_task(self._receive(subscription), name="heartbeat-receive"),
            asyncio.create_task(self._beat(), name="heartbeat-publish"),
        ]

    async def stop(self) -> None:
        """Stop beating and unsubscribe; idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Heartbeat:
        """Start, and return the heartbeat."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop."""
        await self.stop()

    async def _receive(self, subscription: SubscriptionLike) -> None:
        async for item in subscription:
            if isinstance(item, Message):
                self._last_received = time.monotonic()

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        beat = 0
        while True:
            beat += 1
            next_beat = loop.time() + self._interval
            try:
                # A publish stuck longer than stale_after proves nothing; do not let it stall us.
                async with asyncio.timeout(self._stale_after):
                    await self._broker.publish(self._channel, str(beat))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Warn once per outage, not once a second.
                if not failing:
                    logger.warning("heartbeat publish failed: %s", exc or type(exc).__name__)
                    failing = True
            else:
                if failing:
                    logger.info("heartbeat publish works again")
                    failing = False
            await asyncio.sleep(max(0.0, next_beat - loop.time()))
