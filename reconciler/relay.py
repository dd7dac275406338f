"""Outbox relay: publish events whose ``published_at`` is still empty after a grace period.

A web process publishes right after commit; if it died in between, or the broker refused the
publish, the event sits unpublished in the log. The relay finds it and publishes it, so live
subscribers get it within seconds without reconnecting. Several relays may run at once: on
PostgreSQL each claims its batch with ``FOR UPDATE SKIP LOCKED``. A publish that goes out twice
is harmless: hubs drop a seq they already delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import select, update

from channels import BrokerError
from server import protocol
from server.db import Database
from server.metrics import Metrics
from server.models import Event, StreamEvent, utcnow
from server.streams import prune
from server.writes import Delivery, Publisher

logger = logging.getLogger(__name__)


class Relay:
    """Publishes stragglers from the event log; ``run_once`` for tests, ``run`` for production."""

    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        metrics: Metrics,
        *,
        grace: float = 2.0,
        interval: float = 1.0,
        batch: int = 200,
        retention: timedelta | None = None,
        prune_every: float = 60.0,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._metrics = metrics
        self._grace = timedelta(seconds=grace)
        self._interval = interval
        self._batch = batch
        self._retention = retention
        self._prune_every = prune_every

    async def run_once(self) -> int:
        """Publish one batch of unpublished events older than the grace period; how many."""
        cutoff = utcnow() - self._grace
        async with self._db.transaction() as session:
            statement = (
                select(Event)
                .where(Event.published_at.is_(None), Event.created_at <= cutoff)
                .order_by(Event.id)
                .limit(self._batch)
            )
            if self._db.is_postgres:
                statement = statement.with_for_update(skip_locked=True)
            events = list((await session.execute(statement)).scalars())
            if not events:
                return 0
            by_id = {event.id: event for event in events}
            positions: defaultdict[int, list[tuple[str, int]]] = defaultdict(list)
            rows = await session.execute(
                select(StreamEvent.event_id, StreamEvent.stream, StreamEvent.seq)
                .where(StreamEvent.event_id.in_(list(by_id)))
                .order_by(StreamEvent.stream, StreamEvent.seq)
            )
            for event_id, stream, seq in rows:
                positions[event_id].append((stream, int(seq)))
            published: list[int] = []
            for event in events:
                deliveries = [
                    Delivery(
                        stream, seq, protocol.dumps(protocol.event_payload(stream, seq, event))
                    )
                    for stream, seq in positions[event.id]
                ]
                try:
                    await self._publisher.send(deliveries)
                except BrokerError as exc:
                    logger.warning("relay could not publish event %s: %s", event.id, exc)
                    break
                published.append(event.id)
            if published:
                await session.execute(
                    update(Event).where(Event.id.in_(published)).values(published_at=utcnow())
                )
        if published:
            self._metrics.relayed_events.inc(len(published))
            logger.info("relay published %d straggling event(s)", len(published))
        return len(published)

    async def prune_once(self) -> int:
        """Delete events older than the retention period (none if retention is off)."""
        if self._retention is None:
            return 0
        before = utcnow() - self._retention
        pruned = await prune(self._db, before)
        if pruned:
            logger.info("pruned %d event(s) older than %s", pruned, before.isoformat())
        return pruned

    async def run(self, stop: asyncio.Event) -> None:
        """Relay (and prune) until ``stop`` is set; errors are logged and retried."""
        logger.info(
            "relay started (grace %.1fs, every %.1fs)", self._grace.total_seconds(), self._interval
        )
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while not stop.is_set():
            try:
                if self._retention is not None and loop.time() >= next_prune:
                    next_prune = loop.time() + self._prune_every
                    await self.prune_once()
                count = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("relay pass failed; retrying in %.1fs", self._interval)
                count = 0
            if count < self._batch:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self._interval)
                except TimeoutError:
                    pass
        logger.info("relay stopped")
