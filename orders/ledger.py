"""One money write on an order, the shape every payment and refund change shares.

``Ledger.lock`` takes the order's row lock (always first, then a payment's: two writers never
deadlock); ``change`` bumps the order's version; ``append`` logs an event on its streams and
collects the deliveries; ``cascade`` moves the order as its payments now say
(``order_after_payment``); ``save`` writes the order row; after the commit, ``publish`` sends
what was collected. Settlement (payments, manual payments, webhooks) and refunds (request, apply,
the refunds of a cancel) all go through it, so the sequence is written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from orders import documents, money
from orders.models import events_table, orders_table, payments_table, webhook_receipts_table
from orders.payments import LIVE, PAID, FailurePolicy, PaymentStatus, order_after_payment
from orders.workflow import Mover, OrderStatus, can_move
from orders.writes import ORDER_STATUS, Actor, Delivery, Publisher, append_event


@dataclass(frozen=True, slots=True)
class Receipt:
    """A verified webhook to record once, in the same transaction as what it changes."""

    gateway: str
    event_id: str
    body: Mapping[str, Any]


@dataclass(slots=True)
class Ledger:
    """An order locked in the caller's transaction, and the events its change has appended."""

    session: AsyncSession
    conn: AsyncConnection
    order: documents.OrderRow
    deliveries: list[Delivery] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)

    @classmethod
    async def lock(cls, session: AsyncSession, order_id: str) -> Ledger | None:
        """Lock the order's row (FOR UPDATE) in ``session``'s transaction; None: no such order."""
        conn = await session.connection()
        row = (await conn.execute(LOCK_ORDER, {"order_id": order_id})).first()
        if row is None:
            return None
        return cls(session, conn, order_row(row._mapping))

    async def lock_payment(self, payment_id: str) -> Any:
        """Lock one of the order's payments (after the order, never before)."""
        return (await self.conn.execute(_LOCK_PAYMENT, {"payment_id": payment_id})).one()

    async def payments(self) -> list[Any]:
        """Lock and read every payment of the order."""
        return list((await self.conn.execute(LOCK_PAYMENTS, {"order_id": self.order.id})).all())

    def change(self, now: datetime, **values: Any) -> documents.OrderRow:
        """The order with ``values`` changed and its version bumped (written by ``save``)."""
        self.order = dataclasses.replace(
            self.order, version=self.order.version + 1, updated_at=now, **values
        )
        return self.order

    async def append(
        self,
        *,
        kind: str,
        from_status: str | None,
        to_status: str,
        actor: Actor,
        note: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> documents.EventRow:
        """Log an event of the order as it stands now, on its streams."""
        event, moved = await append_event(
            self.session,
            self.order,
            kind=kind,
            from_status=from_status,
            to_status=to_status,
            actor=actor,
            note=note,
            extra=extra,
        )
        self.deliveries.extend(moved)
        self.event_ids.append(event.id)
        return event

    async def cascade(
        self,
        before: OrderStatus,
        payment: PaymentStatus,
        *,
        payment_id: str,
        actor: Actor,
        policy: FailurePolicy,
        now: datetime,
    ) -> OrderStatus | None:
        """Move the order (from ``before``) as its payments now say, after ``payment_id``
        became ``payment``; the status it moved to, or None."""
        siblings = await self.payments()
        paid = sum(p.amount for p in siblings if p.status in PAID)
        live_others = sum(1 for p in siblings if p.status in LIVE and p.id != payment_id)
        target = order_after_payment(
            before,
            payment,
            amount=self.order.amount,
            paid=paid,
            live_attempts=live_others,
            on_failure=policy,
        )
        if target is None or not can_move(before, target, Mover.SYSTEM):
            return None
        self.change(now, status=target.value)
        await self.append(
            kind=ORDER_STATUS,
            from_status=before.value,
            to_status=target.value,
            actor=actor,
            note=f"payment {payment_id} {payment.value}",
        )
        return target

    async def observe(
        self,
        *,
        kind: str,
        from_status: str,
        to_status: str,
        actor: Actor,
        now: datetime,
        data: dict[str, Any],
    ) -> None:
        """Log, for the audit trail only, what a gateway said that changed nothing.

        The row is on no stream and marked published, so the relay never sends it: a refused
        or repeated observation is kept for review, not shown to the customer.
        """
        await self.conn.execute(
            insert(events_table),
            {
                "order_id": self.order.id,
                "kind": kind,
                "from_status": from_status,
                "to_status": to_status,
                "source": actor.source,
                "actor": actor.name,
                "data": data,
                "created_at": now,
                "published_at": now,
            },
        )

    async def save(self) -> None:
        """Write the order row as changed."""
        await self.conn.execute(UPDATE_ORDER, order_values(self.order))

    async def summary(self) -> dict[str, Any]:
        """The order's payment summary as the rows stand in this transaction."""
        return await money.summary_of(self.conn, self.order)

    async def snapshot(self) -> dict[str, Any]:
        """The order's JSON snapshot with its summary, as of this transaction."""
        return documents.order_snapshot(self.order, await self.summary())

    async def publish(self, publisher: Publisher) -> None:
        """After the commit: publish what was appended."""
        if self.deliveries:
            await publisher.publish(self.deliveries, self.event_ids)


async def insert_receipt(
    conn: AsyncConnection,
    *,
    postgres: bool,
    receipt: Receipt,
    payment_id: str | None,
    outcome: str,
    now: datetime,
) -> int | None:
    """Record a webhook once (its gateway and event id are unique); None if already recorded."""
    dialect = postgresql if postgres else sqlite
    statement = (
        dialect.insert(webhook_receipts_table)
        .on_conflict_do_nothing()
        .returning(webhook_receipts_table.c.id)
    )
    inserted = (
        await conn.execute(
            statement,
            {
                "gateway": receipt.gateway,
                "gateway_event_id": receipt.event_id,
                "payment_id": payment_id,
                "outcome": outcome,
                "received_at": now,
                "body": dict(receipt.body),
            },
        )
    ).scalar()
    return None if inserted is None else int(inserted)


async def set_receipt_outcome(conn: AsyncConnection, receipt_id: int, outcome: str) -> None:
    """What a recorded webhook did, once it is known."""
    await conn.execute(
        update(webhook_receipts_table)
        .where(webhook_receipts_table.c.id == receipt_id)
        .values(outcome=outcome)
    )


def order_row(mapping: Any) -> documents.OrderRow:
    """An order row mapping as the write path's plain OrderRow."""
    return documents.OrderRow(
        **{f.name: mapping[f.name] for f in dataclasses.fields(documents.OrderRow)}
    )


def order_values(order: documents.OrderRow) -> dict[str, Any]:
    """The bind values of ``UPDATE_ORDER`` for ``order``."""
    return {
        "order_id": order.id,
        "status": order.status,
        "payment_status": order.payment_status,
        "needs_review": order.needs_review,
        "version": order.version,
        "updated_at": order.updated_at,
    }


LOCK_ORDER = (
    select(orders_table).where(orders_table.c.id == bindparam("order_id")).with_for_update()
)
PAYMENT_BY_ID = select(payments_table).where(payments_table.c.id == bindparam("payment_id"))
_LOCK_PAYMENT = PAYMENT_BY_ID.with_for_update()
LOCK_PAYMENTS = (
    select(payments_table)
    .where(payments_table.c.order_id == bindparam("order_id"))
    .order_by(payments_table.c.id)
    .with_for_update()
)
UPDATE_ORDER = (
    update(orders_table)
    .where(orders_table.c.id == bindparam("order_id"))
    .values(
        status=bindparam("status"),
        payment_status=bindparam("payment_status"),
        needs_review=bindparam("needs_review"),
        version=bindparam("version"),
        updated_at=bindparam("updated_at"),
    )
)
