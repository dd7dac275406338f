"""The one write path: lock → validate → update → append event → seq per stream → commit → publish.

POS updates, customer cancels, order creation (and later webhooks, the reconciler and expiry)
all change state here and nowhere else. Publishing happens strictly after commit; a publish
that fails leaves ``published_at`` empty and the outbox relay delivers the event later. The
request path never waits on the broker: it queues the publish (see :class:`Publisher`).
On PostgreSQL the endpoints' status changes take the same steps in fewer statements, many
changes per COMMIT (``orders/groupcommit.py``, which validates with :func:`check_move`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from channels import Broker, BrokerError
from channels.cluster import same_shard
from orders import documents, money
from orders.actors import Principal, Role
from orders.db import Database
from orders.errors import Conflict, Forbidden, NotFound
from orders.hooks import NO_HOOKS, Hooks
from orders.metrics import Metrics
from orders.models import Order, events_table, orders_table, utcnow
from orders.streams import append_to_streams, streams_of
from orders.workflow import (
    Mover,
    OrderStatus,
    PaymentMethod,
    allowed_next,
    can_move,
    initial_status,
    parse_status,
)

logger = logging.getLogger(__name__)

ORDER_STATUS = "order.status"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: its workflow role, its audit name, the source, and its identity."""

    mover: Mover
    name: str
    source: str
    principal: Principal | None = None

    @classmethod
    def of(cls, principal: Principal, source: str | None = None) -> Actor:
        """The actor for a request made with ``principal``'s token."""
        default_source = {Role.POS: "pos", Role.ADMIN: "system"}.get(principal.role, "customer")
        return cls(principal.mover, principal.actor, source or default_source, principal)

    @classmethod
    def system(cls, source: str = "system", name: str = "system") -> Actor:
        """The service itself (relay, expiry, reconciler)."""
        return cls(Mover.SYSTEM, name, source, None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event's position in one stream, serialised for the wire."""

    stream: str
    seq: int
    text: str


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of a committed change: the order, the event and its deliveries."""

    order: dict[str, Any]
    event: documents.EventRow
    deliveries: tuple[Delivery, ...]


#: More work inside a status change's transaction: (session, the order as moved, deliveries,
#: event ids) → the order as it leaves it (see ``change_order_status``).
Within = Callable[
    [AsyncSession, documents.OrderRow, list[Delivery], list[int]],
    Awaitable[documents.OrderRow],
]

#: The most stream deliveries the publish sender puts in one pipelined round trip.
_BATCH_DELIVERIES = 512

#: The shape of every order id this service issues; anything else cannot name an order.
ORDER_ID = re.compile(r"ord_[0-9a-f]{24}")


def new_order_id() -> str:
    """A random, unguessable order id."""
    return "ord_" + secrets.token_hex(12)


def visible_to(order: Order | documents.OrderRow, principal: Principal) -> bool:
    """Whether ``principal`` may see ``order``: its owner, its store, or an admin."""
    if principal.role is Role.ADMIN:
        return True
    if principal.role is Role.POS:
        return order.store_id == principal.store_id
    return order.customer_id == principal.sub


class Publisher:
    """Publishes committed deliveries and marks their events published.

    Inside ``async with publisher:`` the request path only *queues* what it committed: a
    background sender publishes the queue in order, many events per pipelined round trip, so a
    broker that is slow, paused or black-holed never holds up a 2xx. The queue is bounded
    (``queue_size`` events); when it is full the event is not queued — it stays unpublished in
    the log for the relay (``publish_queue_overflow_total``), and hubs poll it meanwhile.
    Marking is batched too: a background task writes ``published_at`` for many events in one
    UPDATE every ``mark_interval`` seconds. Outside the context (tests, tools) each publish goes
    out and is marked at once. An event published but not yet marked when the process dies is
    published again by the relay; hubs drop the duplicate by seq.
    """

    def __init__(
        self,
        db: Database,
        broker: Broker,
        *,
        prefix: str,
        metrics: Metrics,
        mark_interval: float = 0.05,
        queue_size: int = 10_000,
        drain_timeout: float = 2.0,
        hooks: Hooks = NO_HOOKS,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._hooks = hooks
        self._db = db
        self._broker = broker
        self._prefix = prefix
        self._metrics = metrics
        self._mark_interval = mark_interval
        self._unmarked: list[int] = []
        self._wakeup = asyncio.Event()
        self._marker: asyncio.Task[None] | None = None
        self._queue: deque[tuple[Sequence[Delivery], Sequence[int]]] = deque()
        self._queue_size = queue_size
        self._queued = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._drain_timeout = drain_timeout
        self._overflowing = False

    def channel(self, stream: str) -> str:
        """The broker channel that carries ``stream``."""
        return self._prefix + stream

    @property
    def queued(self) -> int:
        """Events waiting in the publish queue."""
        return len(self._queue)

    async def __aenter__(self) -> Publisher:
        self._marker = asyncio.create_task(self._mark_forever(), name="publish-marker")
        self._sender = asyncio.create_task(self._send_forever(), name="publish-sender")
        self._metrics.publish_queue_depth.set_function(lambda: len(self._queue))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        # Give what is still queued a short chance to go out; the relay has the rest.
        try:
            async with asyncio.timeout(self._drain_timeout):
                while self._queue:
                    await self._send_batch()
        except TimeoutError:
            logger.warning("%d queued event(s) left to the relay at shutdown", len(self._queue))
        self._queue.clear()
        marker, self._marker = self._marker, None
        if marker is not None:
            marker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await marker
        await self._flush_marks()

    async def send(self, deliveries: Sequence[Delivery]) -> None:
        """Hand every delivery to the broker in one go; BrokerError if it cannot take them."""
        await self._broker.publish_many(
            [(self._prefix + d.stream, documents.pack(d.seq, d.text)) for d in deliveries]
        )

    async def probe(self, *streams: str) -> bool:
        """Whether the broker takes a publish right now (an empty message on a private channel;
        given ``streams``, one on the shard of each, for a Redis Cluster may be down in part)."""
        base = self._prefix + "_probe"
        channels = {same_shard(self._prefix + stream, base) for stream in streams} or {base}
        try:
            await self._broker.publish_many([(channel, "") for channel in sorted(channels)])
        except BrokerError:
            return False
        return True

    async def publish(self, deliveries: Sequence[Delivery], event_ids: Sequence[int]) -> bool:
        """After commit: queue (or, outside the context, send) the deliveries of ``event_ids``.

        True if they were queued or sent; False if they are left to the relay (queue full, or
        the broker refused them).
        """
        if self._sender is None:
            return await self._send_now(deliveries, event_ids)
        if len(self._queue) >= self._queue_size:
            self._metrics.publish_queue_overflow.inc(len(event_ids))
            if not self._overflowing:
                # Once per burst: the sender is stuck on a stalled broker, or cannot keep up.
                logger.warning(
                    "publish queue full (%d events); leaving events to the relay",
                    self._queue_size,
                )
                self._overflowing = True
            return False
        self._queue.append((deliveries, event_ids))
        self._queued.set()
        return True

    async def _send_forever(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                try:
                    await self._send_batch()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The batch is the relay's now; the sender must outlive it.
                    logger.exception("publish sender failed on a batch; the relay will retry")

    async def _send_batch(self) -> None:
        """Publish the oldest queued events, up to ``_BATCH_DELIVERIES``, in one round trip."""
        deliveries: list[Delivery] = []
        event_ids: list[int] = []
        while self._queue and len(deliveries) < _BATCH_DELIVERIES:
            item_deliveries, item_ids = self._queue.popleft()
            deliveries.extend(item_deliveries)
            event_ids.extend(item_ids)
        if len(self._queue) < self._queue_size:
            self._overflowing = False
        await self._send_now(deliveries, event_ids)

    async def _send_now(self, deliveries: Sequence[Delivery], event_ids: Sequence[int]) -> bool:
        """Publish every delivery; mark the events published only if all went out."""
        await self._hooks.before_publish(event_ids)
        try:
            await self.send(deliveries)
        except BrokerError as exc:
            self._metrics.publish_failures.inc()
            logger.warning("publish failed; the relay will retry: %s", exc)
            return False
        self._metrics.events_published.inc(len(deliveries))
        self._unmarked.extend(event_ids)
        if self._marker is None:
            await self._flush_marks()
        else:
            self._wakeup.set()
        return True

    async def _mark_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._flush_marks()
            # Let more publishes pile up so one UPDATE covers many events.
            await asyncio.sleep(self._mark_interval)

    async def _flush_marks(self) -> None:
        ids, self._unmarked = self._unmarked, []
        if not ids:
            return
        try:
            async with self._db.transaction() as session:
                await session.execute(
                    update(events_table)
                    .where(events_table.c.id.in_(ids), events_table.c.published_at.is_(None))
                    .values(published_at=utcnow())
                )
        except Exception:
            # Published but not marked: the relay will publish again and hubs drop the duplicate.
            logger.exception("could not mark %d event(s) published", len(ids))


async def append_event(
    session: AsyncSession,
    order: documents.OrderRow,
    *,
    kind: str,
    from_status: str | None,
    to_status: str,
    actor: Actor,
    note: str | None = None,
    extra: dict[str, Any] | None = None,
    payment_summary: dict[str, Any] | None = None,
) -> tuple[documents.EventRow, tuple[Delivery, ...]]:
    """Inside the caller's transaction: log an event and give it the next seq of each stream.

    ``extra`` adds fields to the event's data (a ``payment.status`` event carries its payment).
    The order snapshot's ``payment_summary`` is read from the payment and refund rows in this
    transaction (after the caller's changes to them), unless the caller knows it.
    """
    conn = await session.connection()
    if payment_summary is None:
        payment_summary = await money.summary_of(conn, order)
    data: dict[str, Any] = {"order": documents.order_snapshot(order, payment_summary)}
    if note is not None:
        data["note"] = note
    if extra:
        data.update(extra)
    draft = documents.EventRow(
        id=0,
        order_id=order.id,
        kind=kind,
        from_status=from_status,
        to_status=to_status,
        source=actor.source,
        actor=actor.name,
        data=data,
        created_at=order.updated_at,
    )
    values = _shallow_fields(draft)
    del values["id"]
    event_id = (await conn.execute(_INSERT_EVENT, values)).scalar_one()
    event = dataclasses.replace(draft, id=int(event_id))
    seqs = await append_to_streams(session, streams_of(order), event.id)
    deliveries = tuple(
        Delivery(stream, seq, documents.dumps(documents.event_payload(stream, seq, event)))
        for stream, seq in seqs
    )
    return event, deliveries


async def create_order(
    db: Database,
    publisher: Publisher,
    metrics: Metrics,
    *,
    customer_id: str | None,
    store_id: str,
    items: list[dict[str, Any]],
    currency: str,
    payment_method: PaymentMethod,
    actor: Actor,
    expiry: timedelta,
) -> Written:
    """Create an order in its initial status and log that as its first event."""
    now = utcnow()
    status = initial_status(payment_method)
    order = documents.OrderRow(
        id=new_order_id(),
        customer_id=customer_id,
        store_id=store_id,
        status=status.value,
        payment_status="UNPAID" if payment_method is PaymentMethod.ONLINE else "CASH",
        payment_method=payment_method.value,
        amount=sum(int(item["quantity"]) * int(item["unit_price"]) for item in items),
        currency=currency,
        items=items,
        needs_review=False,
        created_at=now,
        updated_at=now,
        expires_at=now + expiry if payment_method is PaymentMethod.ONLINE else None,
        version=1,
    )
    started = time.perf_counter()
    async with db.transaction() as session:
        conn = await session.connection()
        await conn.execute(_INSERT_ORDER, _shallow_fields(order))
        event, deliveries = await append_event(
            session,
            order,
            kind=ORDER_STATUS,
            from_status=None,
            to_status=status.value,
            actor=actor,
            # A new order has no payment or refund rows yet.
            payment_summary=money.summary(
                amount=order.amount, status=order.status, currency=currency, sums=money.Sums()
            ),
        )
    metrics.write_seconds.observe(time.perf_counter() - started)
    metrics.events_written.labels(kind=ORDER_STATUS, source=actor.source).inc()
    await publisher.publish(deliveries, [event.id])
    return Written(event.data["order"], event, deliveries)


def check_move(
    order: documents.OrderRow, to: OrderStatus, actor: Actor, metrics: Metrics
) -> OrderStatus:
    """The order's current status if ``actor`` may move it to ``to``; NotFound / Conflict if not."""
    if actor.principal and not visible_to(order, actor.principal):
        raise NotFound("no such order")
    current = parse_status(order.status)
    if current is None:
        # A status this code does not know (written by a newer version, or by hand): no
        # rule of ours can say where it may go, so nothing moves it; the order is kept as is.
        logger.error("order %s has unknown status %r; refusing to move it", order.id, order.status)
        metrics.rejected_transitions.inc()
        raise Conflict(
            f"order has status {order.status!r}, which this service does not know;"
            " it cannot be moved",
            code="unknown_status",
            status=order.status,
            allowed=[],
        )
    if not can_move(current, to, actor.mover):
        allowed = [s.value for s in allowed_next(current, actor.mover)]
        metrics.rejected_transitions.inc()
        raise Conflict(
            f"cannot move order from {current.value} to {to.value}",
            code="invalid_transition",
            status=current.value,
            allowed=allowed,
        )
    return current


async def change_order_status(
    db: Database,
    publisher: Publisher,
    metrics: Metrics,
    *,
    order_id: str,
    to: OrderStatus,
    actor: Actor,
    note: str | None = None,
    within: Within | None = None,
) -> Written:
    """Move an order to ``to`` if the workflow lets ``actor`` do so; 404 / 409 otherwise.

    One change in a transaction of its own, through SQLAlchemy: SQLite's path, cancels' (see
    ``Refunds.change_status``) and tools'. The endpoints' other moves go through
    ``orders.groupcommit.GroupCommit`` (on PostgreSQL: lean statements, and a POS change
    batched with its store's concurrent ones).

    ``within``: more work in the same transaction after the move (a cancel's refunds); it
    appends its own events to the deliveries and event ids it is handed and returns the order
    as it leaves it (written by itself).
    """
    if not ORDER_ID.fullmatch(order_id):
        raise NotFound("no such order")
    started = time.perf_counter()
    async with db.transaction() as session:
        conn = await session.connection()
        row = (await conn.execute(_LOCK_ORDER, {"order_id": order_id})).first()
        if row is None:
            raise NotFound("no such order")
        current_order = documents.OrderRow(**row._mapping)
        current = check_move(current_order, to, actor, metrics)
        order = dataclasses.replace(
            current_order, status=to.value, version=current_order.version + 1, updated_at=utcnow()
        )
        await conn.execute(
            _UPDATE_STATUS,
            {
                "order_id": order_id,
                "status": order.status,
                "version": order.version,
                "updated_at": order.updated_at,
            },
        )
        event, deliveries = await append_event(
            session,
            order,
            kind=ORDER_STATUS,
            from_status=current.value,
            to_status=to.value,
            actor=actor,
            note=note,
        )
        snapshot = event.data["order"]
        if within is not None:
            more: list[Delivery] = list(deliveries)
            event_ids = [event.id]
            order = await within(session, order, more, event_ids)
            if len(event_ids) > 1:
                deliveries = tuple(more)
                snapshot = documents.order_snapshot(order, await money.summary_of(conn, order))
    metrics.write_seconds.observe(time.perf_counter() - started)
    metrics.events_written.labels(kind=ORDER_STATUS, source=actor.source).inc()
    if within is None:
        await publisher.publish(deliveries, [event.id])
    else:
        await publisher.publish(deliveries, event_ids)
    return Written(snapshot, event, deliveries)


# The hot path's statements, built once: building a statement costs more than running it.
_LOCK_ORDER = (
    select(orders_table).where(orders_table.c.id == bindparam("order_id")).with_for_update()
)
_UPDATE_STATUS = (
    update(orders_table)
    .where(orders_table.c.id == bindparam("order_id"))
    .values(
        status=bindparam("status"), version=bindparam("version"), updated_at=bindparam("updated_at")
    )
)
_INSERT_ORDER = insert(orders_table)
_INSERT_EVENT = insert(events_table).returning(events_table.c.id)


def _shallow_fields(row: documents.OrderRow | documents.EventRow) -> dict[str, Any]:
    # dataclasses.asdict deep-copies nested JSON; the statement only needs references.
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}


def require_store(principal: Principal, store_id: str | None) -> str:
    """The store a POS principal acts for; another store is forbidden."""
    assert principal.store_id is not None
    if store_id is not None and store_id != principal.store_id:
        raise Forbidden("a terminal can only act for its own store")
    return principal.store_id
