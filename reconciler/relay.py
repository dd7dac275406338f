"""Outbox relay: publish events whose ``published_at`` is still empty after a grace period.

A web process publishes right after commit; if it died in between, or the broker refused the
publish, the event sits unpublished in the log. The relay finds it and publishes it, so live
subscribers get it within seconds without reconnecting. A publish that goes out twice is
harmless: hubs drop a seq they already delivered.

One pass: claim a batch, read it, **end the transaction**, publish, then mark the published ones
in a short transaction of their own — no transaction (on SQLite: the database's write lock) is
held while the broker is slow. Several relays may run at once on PostgreSQL: each claims its
batch with session-level advisory locks (held on the relay's connection, outside any
transaction), so no two publish the same event. An event that cannot be published while the
broker takes others (a payload the broker refuses, a malformed row) does not hold up the ones
after it; after ``max_attempts`` failed passes it is *parked* — marked, logged at ERROR and
counted in ``relay_parked_events_total`` — and subscribers get it from the log by gap repair.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from channels import BrokerError
from orders import documents
from orders.db import Database
from orders.metrics import Metrics
from orders.models import events_table, stream_events_table, utcnow
from orders.streams import prune
from orders.writes import Delivery, Publisher

logger = logging.getLogger(__name__)

#: The first key of the relay's advisory locks (two-int form: its own key space, apart from the
#: bigint migration lock); the second is the event id folded into an int4.
_RELAY_LOCK_CLASS = 7_311_954


@dataclass(frozen=True, slots=True)
class _Straggler:
    """An unpublished event and its positions in its streams."""

    event: documents.EventRow
    positions: tuple[tuple[str, int], ...]

    def deliveries(self) -> list[Delivery]:
        return [
            Delivery(stream, seq, documents.dumps(documents.event_payload(stream, seq, self.event)))
            for stream, seq in self.positions
        ]


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
        max_attempts: int = 5,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._db = db
        self._publisher = publisher
        self._metrics = metrics
        self._grace = timedelta(seconds=grace)
        self._interval = interval
        self._batch = batch
        self._retention = retention
        self._prune_every = prune_every
        self._max_attempts = max_attempts
        # Failed passes per event, while the broker took other events; cleared on success.
        self._failures: dict[int, int] = {}

    async def run_once(self) -> int:
        """Publish one batch of unpublished events older than the grace period; how many."""
        cutoff = utcnow() - self._grace
        async with self._claim(cutoff) as (conn, stragglers):
            if not stragglers:
                return 0
            published, parked = await self._publish(stragglers)
            done = published + parked
            if done:
                await self._mark(conn, done)
        if published:
            self._metrics.relayed_events.inc(len(published))
            logger.info("relay published %d straggling event(s)", len(published))
        return len(published)

    @asynccontextmanager
    async def _claim(
        self, cutoff: datetime
    ) -> AsyncIterator[tuple[AsyncConnection, list[_Straggler]]]:
        """A batch of stragglers, read on a connection that holds no transaction afterwards."""
        async with self._db.engine.connect() as conn:
            if not self._db.is_postgres:
                # SQLite: one relay per database file (the embedded default runs the only one).
                ids = list(
                    (
                        await conn.execute(_CANDIDATES, {"cutoff": cutoff, "batch": self._batch})
                    ).scalars()
                )
                stragglers = await _load(conn, ids)
                await conn.commit()
                yield conn, stragglers
                return
            try:
                ids = list(
                    (
                        await conn.execute(
                            _CLAIM,
                            {"cls": _RELAY_LOCK_CLASS, "cutoff": cutoff, "batch": self._batch},
                        )
                    ).scalars()
                )
                # Read again after locking: another relay may have published and marked one of
                # these between our first look and our lock.
                stragglers = await _load(conn, ids)
                await conn.commit()
                yield conn, stragglers
            finally:
                await _unlock_all(conn)

    async def _publish(self, stragglers: Sequence[_Straggler]) -> tuple[list[int], list[int]]:
        """Publish each straggler in order; (published ids, parked ids)."""
        published: list[int] = []
        parked: list[int] = []
        for straggler in stragglers:
            event_id = straggler.event.id
            try:
                await self._publisher.send(straggler.deliveries())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                streams = [stream for stream, _ in straggler.positions]
                if isinstance(exc, BrokerError) and not await self._publisher.probe(*streams):
                    # The broker takes nothing: stop here, and count nothing against events.
                    logger.warning("relay could not publish event %s: %s", event_id, exc)
                    break
                if self._failed(event_id, exc):
                    parked.append(event_id)
                continue
            self._failures.pop(event_id, None)
            published.append(event_id)
        return published, parked

    def _failed(self, event_id: int, exc: Exception) -> bool:
        """Count a failure of ``event_id`` while the broker works; True when it is to be parked."""
        failures = self._failures.get(event_id, 0) + 1
        if failures < self._max_attempts:
            self._failures[event_id] = failures
            logger.warning(
                "relay could not publish event %s (attempt %d of %d), moving on: %r",
                event_id,
                failures,
                self._max_attempts,
                exc,
            )
            return False
        self._failures.pop(event_id, None)
        self._metrics.relay_parked_events.inc()
        logger.error(
            "relay gave up on event %s after %d failed publishes (%r); it stays in the log and"
            " subscribers get it by gap repair",
            event_id,
            failures,
            exc,
        )
        return True

    async def _mark(self, conn: AsyncConnection, event_ids: list[int]) -> None:
        """Mark events published, in a short transaction of its own."""
        if self._db.is_postgres:
            await conn.execute(_MARK, {"ids": event_ids, "now": utcnow()})
            await conn.commit()
            return
        # SQLite: through the write sessions, which take the write lock up front.
        async with self._db.transaction() as session:
            await session.execute(_MARK, {"ids": event_ids, "now": utcnow()})

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


_CANDIDATES = (
    select(events_table.c.id)
    .where(
        events_table.c.published_at.is_(None),
        events_table.c.created_at <= bindparam("cutoff"),
    )
    .order_by(events_table.c.id)
    .limit(bindparam("batch"))
)
# The LIMIT inside the subquery keeps PostgreSQL from calling the lock function on rows it
# would not return (a lock taken there would be held, unseen, until the pass ends).
_CLAIM = text(
    "SELECT id FROM ("
    " SELECT id FROM events WHERE published_at IS NULL AND created_at <= :cutoff"
    " ORDER BY id LIMIT :batch"
    ") AS candidates"
    " WHERE pg_try_advisory_lock(:cls, (id % 2147483647)::int)"
    " ORDER BY id"
).columns(id=events_table.c.id.type)
_MARK = (
    update(events_table)
    .where(events_table.c.id.in_(bindparam("ids", expanding=True)))
    .where(events_table.c.published_at.is_(None))
    .values(published_at=bindparam("now"))
)


async def _load(conn: AsyncConnection, ids: list[int]) -> list[_Straggler]:
    """The still-unpublished events among ``ids``, oldest first, with their positions."""
    if not ids:
        return []
    rows = await conn.execute(
        select(events_table)
        .where(events_table.c.id.in_(ids), events_table.c.published_at.is_(None))
        .order_by(events_table.c.id)
    )
    events = [
        documents.EventRow(**{k: v for k, v in row._mapping.items() if k != "published_at"})
        for row in rows
    ]
    if not events:
        return []
    positions: defaultdict[int, list[tuple[str, int]]] = defaultdict(list)
    position_rows = await conn.execute(
        select(
            stream_events_table.c.event_id, stream_events_table.c.stream, stream_events_table.c.seq
        )
        .where(stream_events_table.c.event_id.in_([e.id for e in events]))
        .order_by(stream_events_table.c.stream, stream_events_table.c.seq)
    )
    for event_id, stream, seq in position_rows:
        positions[int(event_id)].append((str(stream), int(seq)))
    return [_Straggler(e, tuple(positions[e.id])) for e in events]


async def _unlock_all(conn: AsyncConnection) -> None:
    """Release this connection's advisory locks before it goes back to the pool."""
    try:
        await conn.rollback()
        await conn.execute(text("SELECT pg_advisory_unlock_all()"))
        await conn.commit()
    except asyncio.CancelledError:
        await conn.invalidate()
        raise
    except Exception:
        # Closing the connection releases its locks on the server.
        logger.warning("relay could not release its claims; dropping the connection")
        await conn.invalidate()
