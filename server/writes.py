"""The one write path: lock → validate → update → append event → seq per stream → commit → publish.

POS updates, customer cancels, order creation (and later webhooks, the reconciler and expiry)
all change state here and nowhere else. Publishing happens strictly after commit; a publish
that fails leaves ``published_at`` empty and the outbox relay delivers the event later.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from channels import Broker, BrokerError
from server import protocol
from server.auth import Principal, Role
from server.db import Database
from server.errors import Conflict, Forbidden, NotFound
from server.metrics import Metrics
from server.models import Event, Order, StreamEvent, utcnow
from server.streams import allocate_seq, streams_of
from server.workflow import (
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
    event: Event
    deliveries: tuple[Delivery, ...]


#: The shape of every order id this service issues; anything else cannot name an order.
ORDER_ID = re.compile(r"ord_[0-9a-f]{24}")


def new_order_id() -> str:
    """A random, unguessable order id."""
    return "ord_" + secrets.token_hex(12)


def visible_to(order: Order, principal: Principal) -> bool:
    """Whether ``principal`` may see ``order``: its owner, its store, or an admin."""
    if principal.role is Role.ADMIN:
        return True
    if principal.role is Role.POS:
        return order.store_id == principal.store_id
    return order.customer_id == principal.sub


class Publisher:
    """Publishes committed deliveries and marks their events published."""

    def __init__(self, db: Database, broker: Broker, *, prefix: str, metrics: Metrics) -> None:
        self._db = db
        self._broker = broker
        self._prefix = prefix
        self._metrics = metrics

    def channel(self, stream: str) -> str:
        """The broker channel that carries ``stream``."""
        return self._prefix + stream

    async def send(self, deliveries: Sequence[Delivery]) -> None:
        """Hand every delivery to the broker; BrokerError if it cannot take them."""
        for delivery in deliveries:
            await self._broker.publish(
                self._prefix + delivery.stream, protocol.pack(delivery.seq, delivery.text)
            )

    async def publish(self, deliveries: Sequence[Delivery], event_ids: Sequence[int]) -> bool:
        """Publish every delivery; mark the events published only if all went out."""
        try:
            await self.send(deliveries)
        except BrokerError as exc:
            self._metrics.publish_failures.inc()
            logger.warning("publish failed; the relay will retry: %s", exc)
            return False
        self._metrics.events_published.inc(len(deliveries))
        try:
            async with self._db.transaction() as session:
                await session.execute(
                    update(Event)
                    .where(Event.id.in_(list(event_ids)), Event.published_at.is_(None))
                    .values(published_at=utcnow())
                )
        except Exception:
            # Published but not marked: the relay will publish again and hubs drop the duplicate.
            logger.exception("could not mark events %s published", list(event_ids))
        return True


async def append_event(
    session: AsyncSession,
    order: Order,
    *,
    kind: str,
    from_status: str | None,
    to_status: str,
    actor: Actor,
    note: str | None = None,
) -> tuple[Event, tuple[Delivery, ...]]:
    """Inside the caller's transaction: log an event and give it the next seq of each stream."""
    data: dict[str, Any] = {"order": protocol.order_snapshot(order)}
    if note is not None:
        data["note"] = note
    event = Event(
        order_id=order.id,
        kind=kind,
        from_status=from_status,
        to_status=to_status,
        source=actor.source,
        actor=actor.name,
        data=data,
        created_at=order.updated_at,
    )
    session.add(event)
    await session.flush()
    deliveries = []
    for stream in streams_of(order):
        seq = await allocate_seq(session, stream)
        session.add(StreamEvent(stream=stream, seq=seq, event_id=event.id))
        deliveries.append(
            Delivery(stream, seq, protocol.dumps(protocol.event_payload(stream, seq, event)))
        )
    await session.flush()
    return event, tuple(deliveries)


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
    amount = sum(int(item["quantity"]) * int(item["unit_price"]) for item in items)
    order = Order(
        id=new_order_id(),
        customer_id=customer_id,
        store_id=store_id,
        status=status.value,
        payment_status="UNPAID" if payment_method is PaymentMethod.ONLINE else "CASH",
        payment_method=payment_method.value,
        amount=amount,
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
        session.add(order)
        await session.flush()
        event, deliveries = await append_event(
            session, order, kind=ORDER_STATUS, from_status=None, to_status=status.value, actor=actor
        )
    metrics.write_seconds.observe(time.perf_counter() - started)
    metrics.events_written.labels(kind=ORDER_STATUS, source=actor.source).inc()
    await publisher.publish(deliveries, [event.id])
    return Written(protocol.order_snapshot(order), event, deliveries)


async def change_order_status(
    db: Database,
    publisher: Publisher,
    metrics: Metrics,
    *,
    order_id: str,
    to: OrderStatus,
    actor: Actor,
    note: str | None = None,
) -> Written:
    """Move an order to ``to`` if the workflow lets ``actor`` do so; 404 / 409 otherwise."""
    if not ORDER_ID.fullmatch(order_id):
        raise NotFound("no such order")
    started = time.perf_counter()
    async with db.transaction() as session:
        order = (
            await session.execute(select(Order).where(Order.id == order_id).with_for_update())
        ).scalar_one_or_none()
        if order is None or (actor.principal and not visible_to(order, actor.principal)):
            raise NotFound("no such order")
        current = parse_status(order.status)
        assert current is not None, f"order {order.id} has unknown status {order.status}"
        if not can_move(current, to, actor.mover):
            allowed = [s.value for s in allowed_next(current, actor.mover)]
            metrics.rejected_transitions.inc()
            raise Conflict(
                f"cannot move order from {current.value} to {to.value}",
                code="invalid_transition",
                status=current.value,
                allowed=allowed,
            )
        order.status = to.value
        order.version += 1
        order.updated_at = utcnow()
        event, deliveries = await append_event(
            session,
            order,
            kind=ORDER_STATUS,
            from_status=current.value,
            to_status=to.value,
            actor=actor,
            note=note,
        )
    metrics.write_seconds.observe(time.perf_counter() - started)
    metrics.events_written.labels(kind=ORDER_STATUS, source=actor.source).inc()
    await publisher.publish(deliveries, [event.id])
    return Written(protocol.order_snapshot(order), event, deliveries)


def require_store(principal: Principal, store_id: str | None) -> str:
    """The store a POS principal acts for; another store is forbidden."""
    assert principal.store_id is not None
    if store_id is not None and store_id != principal.store_id:
        raise Forbidden("a terminal can only act for its own store")
    return principal.store_id
