"""Status changes on PostgreSQL: a few lean statements per transaction, many changes per COMMIT.

One transaction applies a *batch* of status changes (one or more), in three statements after
BEGIN, sent on the asyncpg connection itself (no ORM, no SQLAlchemy result machinery):

1. lock every order of the batch (``FOR UPDATE``, in id order) and take one event id per change;
2. read the payment and refund sums of those orders (a statement of its own, so it sees what a
   writer that held an order's lock committed: one statement has one snapshot, taken before
   its lock waits);
3. one statement that updates the orders, inserts the events, moves each stream's head by the
   number of events it gets (the rows upserted, so locked, in sorted name order) and indexes
   the events at their seqs.

Each change is validated in Python between 1 and 3, against the order as the earlier changes of
the batch left it; a refused change gets its own error and writes nothing, so it cannot abort
the others. COMMIT (one fsync) covers the whole batch; every caller is answered only after it
returns, and the deliveries are queued for publishing in seq order.

:class:`GroupCommit` forms the batches: concurrent POS changes queue in a *lane* (a store's
changes always in the same one; ``lanes`` of them, stores spread over them by a hash of the
store id), and one worker per lane applies its queue batch by batch (at most ``max_batch``
changes each; the rest wait for the next). While one batch commits the next one gathers, so a
store's stream row is held once per batch instead of once per change, and many stores share a
COMMIT when one store's changes alone are few. The queue is bounded: past ``max_queued`` waiting
changes in a lane a caller is refused with ``write_queue_full`` (nothing written). A batch whose
statements fail before COMMIT is rolled back and its changes are applied again one by one, so
one change cannot fail another. COMMIT itself failing fails every change of the batch the same
way (``CommitOutcomeUnknown`` when the connection went).

Lock order (no deadlock with the other writers, nor between lanes or processes): order rows
first (here all of the batch's, sorted by id; the other writers lock one), then stream rows in
sorted name order (here all of the batch's in one upsert), never an order row after a stream
row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from orders import documents, money
from orders.actors import Role
from orders.db import Database, StatementFailed
from orders.errors import DomainError, NotFound, Overloaded
from orders.hooks import NO_HOOKS, Hooks
from orders.metrics import Metrics
from orders.models import utcnow
from orders.streams import new_epoch, streams_of
from orders.workflow import OrderStatus
from orders.writes import (
    ORDER_ID,
    ORDER_STATUS,
    Actor,
    Delivery,
    Publisher,
    Written,
    change_order_status,
    check_move,
)

logger = logging.getLogger(__name__)

_ORDER_COLUMNS = (
    "id, customer_id, store_id, status, payment_status, payment_method, amount, currency,"
    " items, needs_review, created_at, updated_at, expires_at, version"
)

# 1. The batch's orders, locked in id order, and one fresh event id per change (the scalar
# subquery runs once).
_LOCK = text(
    "SELECT (SELECT array_agg(nextval(pg_get_serial_sequence('events', 'id')))"
    " FROM generate_series(1, :count)) AS event_ids, "
    f"{_ORDER_COLUMNS} FROM orders WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"
)

# 2. What money.load_sums reads, by order and status.
_SUMS = (
    "SELECT order_id, 'payment', status, sum(amount) FROM payments"
    " WHERE order_id = ANY($1::text[]) AND status = ANY($2::text[]) GROUP BY order_id, status"
    " UNION ALL "
    "SELECT order_id, 'refund', status, sum(amount) FROM refunds"
    " WHERE order_id = ANY($1::text[]) AND status = ANY($3::text[]) GROUP BY order_id, status"
)

# 3. Everything the batch writes, in one statement. Data-modifying CTEs all run; the foreign
# keys of stream_events are checked at the end of the statement, after the events exist.
_WRITE = (
    "WITH u AS ("
    " UPDATE orders AS o SET status = c.status, version = c.version, updated_at = c.updated_at"
    " FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[])"
    " AS c(id, status, version, updated_at) WHERE o.id = c.id"
    "), e AS ("
    " INSERT INTO events (id, order_id, kind, from_status, to_status, source, actor, data,"
    " created_at)"
    " SELECT id, order_id, kind, from_status, to_status, source, actor, data::json, created_at"
    " FROM unnest($5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],"
    " $11::text[], $12::text[], $13::timestamptz[])"
    " AS x(id, order_id, kind, from_status, to_status, source, actor, data, created_at)"
    "), s AS ("
    " INSERT INTO streams AS st (name, head_seq, epoch, pruned_seq)"
    " SELECT name, n, epoch, 0 FROM unnest($14::text[], $15::bigint[], $16::text[])"
    " AS t(name, n, epoch) ORDER BY name"
    " ON CONFLICT (name) DO UPDATE SET head_seq = st.head_seq + EXCLUDED.head_seq"
    " RETURNING name, head_seq"
    ") "
    "INSERT INTO stream_events (stream, seq, event_id)"
    " SELECT p.stream, s.head_seq - p.back, p.event_id"
    " FROM unnest($17::text[], $18::bigint[], $19::bigint[]) AS p(stream, back, event_id)"
    " JOIN s ON s.name = p.stream"
    " RETURNING stream, seq, event_id"
)

_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


@dataclass(frozen=True, slots=True)
class Change:
    """One requested status change."""

    order_id: str
    to: OrderStatus
    actor: Actor
    note: str | None = None


@dataclass(slots=True)
class _Applied:
    """A change that passed validation, waiting for its seqs."""

    index: int
    order: documents.OrderRow
    event: documents.EventRow
    streams: list[str]


class _NotCommitted(Exception):
    """The batch failed before COMMIT: rolled back, nothing of it was written."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


#: A change's result: what it wrote, or why it did not (a refusal, or the batch's failure).
Outcome = Written | Exception


async def apply_changes(db: Database, metrics: Metrics, changes: Sequence[Change]) -> list[Outcome]:
    """Apply ``changes`` in order in one transaction; each one's Written or its refusal.

    Raises ``_NotCommitted`` (wrapping the cause) if a statement failed, and whatever the COMMIT
    raised if it did not succeed (``CommitOutcomeUnknown`` when the connection went).
    """
    outcomes: list[Outcome | None] = [None] * len(changes)
    applied: list[_Applied] = []
    seqs: dict[tuple[str, int], int] = {}
    async with db.transaction() as session:
        # What this transaction applies, for a test's before_commit hook to see.
        session.info["status_changes"] = [change.order_id for change in changes]
        conn = await session.connection()
        try:
            rows, sums, event_ids = await _read(conn, changes)
            orders = dict(rows)
            for index, change in enumerate(changes):
                order = orders.get(change.order_id)
                try:
                    if order is None:
                        raise NotFound("no such order")
                    current = check_move(order, change.to, change.actor, metrics)
                except DomainError as refusal:
                    outcomes[index] = refusal
                    continue
                moved = dataclasses.replace(
                    order, status=change.to.value, version=order.version + 1, updated_at=utcnow()
                )
                orders[change.order_id] = moved
                applied.append(
                    _Applied(
                        index,
                        moved,
                        _event(moved, current, change, event_ids.pop(), sums),
                        streams_of(moved),
                    )
                )
            if applied:
                seqs = await _write(conn, orders, applied)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _NotCommitted(exc) from exc
    for item in applied:
        deliveries = tuple(
            Delivery(
                stream,
                seqs[stream, item.event.id],
                documents.dumps(
                    documents.event_payload(stream, seqs[stream, item.event.id], item.event)
                ),
            )
            for stream in item.streams
        )
        outcomes[item.index] = Written(item.event.data["order"], item.event, deliveries)
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


async def _read(
    conn: AsyncConnection, changes: Sequence[Change]
) -> tuple[list[tuple[str, documents.OrderRow]], dict[str, money.Sums], list[int]]:
    """Lock the batch's orders; their payment sums; event ids, the lowest last (to pop)."""
    ids = sorted({change.order_id for change in changes})
    # Through SQLAlchemy: its first statement is what sends BEGIN.
    result = await conn.execute(_LOCK, {"count": len(changes), "ids": ids})
    rows = result.all()
    if not rows:
        return [], {}, []
    event_ids = sorted((int(i) for i in rows[0][0]), reverse=True)
    orders = []
    for row in rows:
        values = dict(row._mapping)
        del values["event_ids"]
        if isinstance(values["items"], str | bytes):
            values["items"] = orjson.loads(values["items"])
        orders.append((values["id"], documents.OrderRow(**values)))
    driver = await _driver(conn)
    found = [order_id for order_id, _ in orders]
    try:
        sum_rows = await driver.fetch(_SUMS, found, money.PAID_AND_LIVE, money.REFUND_COUNTED)
    except _DRIVER_ERRORS as exc:
        await _failed(conn, driver)
        raise StatementFailed(str(exc)) from exc
    return orders, money.bucket(tuple(row) for row in sum_rows), event_ids


def _event(
    order: documents.OrderRow,
    current: OrderStatus,
    change: Change,
    event_id: int,
    sums: dict[str, money.Sums],
) -> documents.EventRow:
    """The event of a validated change, as ``writes.append_event`` would write it."""
    summary = money.summary(
        amount=order.amount,
        status=order.status,
        currency=order.currency,
        sums=sums.get(order.id, money.Sums()),
    )
    data: dict[str, Any] = {"order": documents.order_snapshot(order, summary)}
    if change.note is not None:
        data["note"] = change.note
    return documents.EventRow(
        id=event_id,
        order_id=order.id,
        kind=ORDER_STATUS,
        from_status=current.value,
        to_status=change.to.value,
        source=change.actor.source,
        actor=change.actor.name,
        data=data,
        created_at=order.updated_at,
    )


async def _write(
    conn: AsyncConnection, orders: dict[str, documents.OrderRow], applied: list[_Applied]
) -> dict[tuple[str, int], int]:
    """Write the applied changes in one statement; the seq of each (stream, event id)."""
    # Each order once, as the batch left it.
    final = {item.order.id: orders[item.order.id] for item in applied}
    events = [item.event for item in applied]
    # Per stream: how many events it gets, and how far each is from the new head.
    counts: dict[str, int] = {}
    for item in applied:
        for stream in item.streams:
            counts[stream] = counts.get(stream, 0) + 1
    left = dict(counts)
    positions: list[tuple[str, int, int]] = []
    for item in applied:
        for stream in item.streams:
            left[stream] -= 1
            positions.append((stream, left[stream], item.event.id))
    names = sorted(counts)
    driver = await _driver(conn)
    try:
        rows = await driver.fetch(
            _WRITE,
            list(final),
            [o.status for o in final.values()],
            [o.version for o in final.values()],
            [o.updated_at for o in final.values()],
            [e.id for e in events],
            [e.order_id for e in events],
            [e.kind for e in events],
            [e.from_status for e in events],
            [e.to_status for e in events],
            [e.source for e in events],
            [e.actor for e in events],
            [documents.dumps(e.data) for e in events],
            [e.created_at for e in events],
            names,
            [counts[name] for name in names],
            [new_epoch() for _ in names],
            [p[0] for p in positions],
            [p[1] for p in positions],
            [p[2] for p in positions],
        )
    except _DRIVER_ERRORS as exc:
        await _failed(conn, driver)
        raise StatementFailed(str(exc)) from exc
    return {(row[0], int(row[2])): int(row[1]) for row in rows}


async def _driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under ``conn`` (inside the transaction SQLAlchemy began)."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def _failed(conn: AsyncConnection, driver: Any) -> None:
    # SQLAlchemy did not see this statement fail: a connection that died must not go back to
    # the pool as if it were alive.
    if driver.is_closed():
        with contextlib.suppress(Exception):
            await conn.invalidate()


class GroupCommit:
    """Status changes on PostgreSQL, batched in lanes of stores; SQLite keeps the simple path.

    ``change_status`` is what the endpoints call. A POS change queues in its store's lane
    (every order a terminal may move is of its store, so the lane is known before the order is
    read, and one store's changes keep their order); any other caller's change is a batch of
    its own. Cancels do not
    come here: a cancel of a paid order requests its refunds in the same transaction
    (``Refunds.change_status``), which the lean statements do not do.
    """

    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        metrics: Metrics,
        *,
        max_batch: int = 100,
        max_queued: int = 2_000,
        lanes: int = 4,
        hooks: Hooks = NO_HOOKS,
    ) -> None:
        if max_batch < 1 or max_queued < 1 or lanes < 1:
            raise ValueError("max_batch, max_queued and lanes must be at least 1")
        self._lanes = lanes
        self._db = db
        self._publisher = publisher
        self._metrics = metrics
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._hooks = hooks
        self._queues: dict[str, deque[tuple[Change, asyncio.Future[Outcome]]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        metrics.group_commit_queued.set_function(
            lambda: sum(len(queue) for queue in self._queues.values())
        )

    async def change_status(
        self, *, order_id: str, to: OrderStatus, actor: Actor, note: str | None = None
    ) -> Written:
        """Move an order to ``to`` if the workflow lets ``actor`` do so; 404 / 409 otherwise."""
        if not self._db.is_postgres:
            return await change_order_status(
                self._db,
                self._publisher,
                self._metrics,
                order_id=order_id,
                to=to,
                actor=actor,
                note=note,
            )
        if not ORDER_ID.fullmatch(order_id):
            raise NotFound("no such order")
        change = Change(order_id, to, actor, note)
        principal = actor.principal
        if principal is None or principal.role is not Role.POS or principal.store_id is None:
            outcome = (await self._run([change]))[0]
        else:
            outcome = await self._queue(self.lane_of(principal.store_id), change)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def lane_of(self, store_id: str) -> str:
        """The lane whose worker applies ``store_id``'s changes."""
        return f"lane-{zlib.crc32(store_id.encode()) % self._lanes}"

    async def close(self) -> None:
        """Stop the workers; a change still queued is refused (nothing of it was written)."""
        workers, self._workers = self._workers, {}
        for worker in workers.values():
            worker.cancel()
        for worker in workers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for queue in self._queues.values():
            while queue:
                _, future = queue.popleft()
                if not future.done():
                    future.set_exception(Overloaded("the service is shutting down; try again"))
        self._queues.clear()

    async def _queue(self, lane: str, change: Change) -> Outcome:
        queue = self._queues.setdefault(lane, deque())
        if len(queue) >= self._max_queued:
            self._metrics.group_commit_overflow.inc()
            raise Overloaded(
                f"{len(queue)} status changes are waiting to be written already; try again",
                code="write_queue_full",
            )
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        queue.append((change, future))
        if lane not in self._workers:
            self._workers[lane] = asyncio.create_task(
                self._drain(lane, queue), name=f"group-commit {lane}"
            )
        await self._hooks.after_write_queued(lane, change.order_id)
        return await future

    async def _drain(self, lane: str, queue: deque[tuple[Change, asyncio.Future[Outcome]]]) -> None:
        """Apply ``lane``'s queue batch by batch until it is empty."""
        try:
            while queue:
                await self._hooks.before_write_batch(lane)
                batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
                # A caller that gave up before its batch began is not applied, as it would not
                # have been alone.
                batch = [(change, future) for change, future in batch if not future.done()]
                if not batch:
                    continue
                try:
                    outcomes = await self._run([change for change, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(
                                Overloaded("the service is shutting down; try again")
                            )
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            if self._workers.get(lane) is asyncio.current_task():
                del self._workers[lane]
                if not queue and self._queues.get(lane) is queue:
                    del self._queues[lane]

    async def _run(self, changes: list[Change]) -> list[Outcome]:
        """Apply one batch, then queue its deliveries in seq order; every change's outcome."""
        started = time.perf_counter()
        try:
            outcomes = await apply_changes(self._db, self._metrics, changes)
        except _NotCommitted as failed:
            if len(changes) == 1:
                raise failed.cause from None
            # Nothing was written: apply each change alone, so one cannot fail the others.
            logger.warning("a batch of %d changes failed; applying them one by one", len(changes))
            outcomes = []
            for change in changes:
                try:
                    outcomes += await apply_changes(self._db, self._metrics, [change])
                except _NotCommitted as alone:
                    if not isinstance(alone.cause, Exception):
                        raise alone.cause from None
                    outcomes.append(alone.cause)
                except Exception as exc:
                    # Its COMMIT failed: this change's outcome, not the ones committed before.
                    outcomes.append(exc)
        elapsed = time.perf_counter() - started
        self._metrics.group_commit_batch.observe(len(changes))
        deliveries: list[Delivery] = []
        event_ids: list[int] = []
        for outcome in outcomes:
            if isinstance(outcome, Written):
                self._metrics.write_seconds.observe(elapsed)
                self._metrics.events_written.labels(
                    kind=ORDER_STATUS, source=outcome.event.source
                ).inc()
                deliveries.extend(outcome.deliveries)
                event_ids.append(outcome.event.id)
        if event_ids:
            await self._publisher.publish(deliveries, event_ids)
        return outcomes
