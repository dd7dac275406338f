"""Receipts: issued inside the transaction that pays an order in full or settles a refund.

A receipt is numbered in its store's own sequence (1, 2, 3 … with no gap) and kept as a JSON
document that is never changed: the row is inserted once, nothing here updates it, and the
database refuses UPDATE and DELETE on ``receipts`` (a trigger, migration 0005).

**Numbers without gaps.** Each store has a counter row (``receipt_counters``) that the issuing
transaction increments with one ``INSERT … ON CONFLICT DO UPDATE … RETURNING``. The row stays
locked until that transaction ends: a concurrent issue for the same store waits, and a rollback
takes the number back with everything else, so every committed number follows the one before.
Lock order: the order, its payments, its streams (the change's own event, appended first), then
the counter — every issuing transaction takes them in that order, so none can deadlock another.

**When.** ``after_payment`` (the settlement's apply and manual paths, after a payment
completes): a sale receipt once what is paid covers the order's amount, at most one per order
(a unique index backs the look under the order lock). ``after_refund`` (the refunds' write path,
after every change of a refund): a refund receipt when the refund is SUCCEEDED, one per refund.

**Tax** (``RECEIPT_TAX_RATE_BP``, basis points; 0: no tax line) is included in the prices: the
tax in an amount ``g`` at rate ``r`` is ``g·r / (10000 + r)``, in integer minor units rounded
half up. A refund receipt uses the rate of the order's sale receipt, so a rate changed between
the sale and the refund never misstates the tax handed back.

Each issue is also a ``receipt.issued`` event on the order's streams (the customer's and the
store's), in the same transaction, so open pages see the receipt arrive.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from orders import documents, money
from orders.ledger import Ledger
from orders.models import payments_table, receipts_table, refunds_table
from orders.payments import PAID, RefundStatus
from orders.writes import Actor

RECEIPT_ISSUED = "receipt.issued"
#: The ``to_status`` of a ``receipt.issued`` event (its ``status`` on the wire).
ISSUED = "ISSUED"
SALE = "sale"
REFUND = "refund"
#: The ``gateway`` of a manual payment (as orders/settlement.py names it).
_MANUAL = "manual"
_CLOSED = frozenset({"CANCELLED", "EXPIRED"})
_PAID = tuple(sorted(s.value for s in PAID))
#: The highest tax rate a deployment may configure: 100 % (10,000 basis points).
MAX_TAX_RATE_BP = 10_000

_NEXT_NUMBER = text(
    "INSERT INTO receipt_counters (store_id, last_number) VALUES (:store_id, 1) "
    "ON CONFLICT (store_id) DO UPDATE SET last_number = receipt_counters.last_number + 1 "
    "RETURNING last_number"
)


def inclusive_tax(gross: int, rate_bp: int) -> int:
    """The tax included in ``gross`` minor units at ``rate_bp`` basis points, half up (PURE)."""
    if rate_bp <= 0 or gross <= 0:
        return 0
    denominator = 10_000 + rate_bp
    return (2 * gross * rate_bp + denominator) // (2 * denominator)


def label(store_id: str, number: int) -> str:
    """How a receipt number is printed: ``<store>-000042``."""
    return f"{store_id}-{number:06d}"


def receipt_ref(document: dict[str, Any]) -> dict[str, Any]:
    """The short form of a receipt that its ``receipt.issued`` event carries."""
    return {
        "number": document["number"],
        "label": document["label"],
        "kind": document["kind"],
        "order_id": document["order_id"],
        "store_id": document["store_id"],
        "amount": document["amount"],
        "currency": document["currency"],
        "issued_at": document["issued_at"],
    }


@dataclass(frozen=True, slots=True)
class Stored:
    """An issued receipt as stored: its number, kind and the exact text of its document."""

    number: int
    kind: str
    document: str


async def after_payment(ledger: Ledger, *, actor: Actor, tax_rate_bp: int) -> dict[str, Any] | None:
    """Inside the paying transaction (order locked): issue the order's sale receipt if what is
    paid now covers its amount and it has none yet; the receipt's short form, or None."""
    order = ledger.order
    if order.status in _CLOSED or order.amount <= 0:
        return None
    sums = (await money.load_sums(ledger.conn, [order.id])).get(order.id, money.Sums())
    if sums.paid < order.amount:
        return None
    existing = await ledger.conn.execute(
        select(receipts_table.c.id).where(
            receipts_table.c.order_id == order.id, receipts_table.c.kind == SALE
        )
    )
    if existing.first() is not None:
        return None
    return await _issue(ledger, SALE, None, tax_rate_bp, actor, sums)


async def after_refund(
    ledger: Ledger, refund_id: str, *, actor: Actor, tax_rate_bp: int
) -> dict[str, Any] | None:
    """Inside the refund's transaction (order locked): issue its refund receipt if it is
    SUCCEEDED and has none yet; the receipt's short form, or None."""
    conn, order = ledger.conn, ledger.order
    refund = (
        await conn.execute(select(refunds_table).where(refunds_table.c.id == refund_id))
    ).one()
    if refund.status != RefundStatus.SUCCEEDED.value:
        return None
    existing = await conn.execute(
        select(receipts_table.c.id).where(receipts_table.c.refund_id == refund_id)
    )
    if existing.first() is not None:
        return None
    sale_rate = (
        await conn.execute(
            select(receipts_table.c.tax_rate_bp).where(
                receipts_table.c.order_id == order.id, receipts_table.c.kind == SALE
            )
        )
    ).scalar()
    rate = tax_rate_bp if sale_rate is None else int(sale_rate)
    sums = (await money.load_sums(conn, [order.id])).get(order.id, money.Sums())
    return await _issue(ledger, REFUND, refund, rate, actor, sums)


async def receipts_of(executor: AsyncConnection | AsyncSession, order_id: str) -> list[Stored]:
    """The order's receipts, oldest first, as stored."""
    r = receipts_table.c
    rows = await executor.execute(
        select(r.number, r.kind, r.document).where(r.order_id == order_id).order_by(r.number)
    )
    return [Stored(int(number), kind, document) for number, kind, document in rows]


async def receipt_of(
    executor: AsyncConnection | AsyncSession, order_id: str, number: int
) -> Stored | None:
    """The order's receipt ``number`` as stored, or None."""
    r = receipts_table.c
    row = (
        await executor.execute(
            select(r.number, r.kind, r.document).where(r.order_id == order_id, r.number == number)
        )
    ).first()
    return None if row is None else Stored(int(row.number), row.kind, row.document)


async def _issue(
    ledger: Ledger, kind: str, refund: Any, rate_bp: int, actor: Actor, sums: money.Sums
) -> dict[str, Any]:
    conn, order = ledger.conn, ledger.order
    number = int((await conn.execute(_NEXT_NUMBER, {"store_id": order.store_id})).scalar_one())
    # The moment of the change that issues it (its event carries the same instant).
    issued_at = order.updated_at
    summary = money.summary(
        amount=order.amount, status=order.status, currency=order.currency, sums=sums
    )
    payments = await conn.execute(
        select(payments_table)
        .where(payments_table.c.order_id == order.id, payments_table.c.status.in_(_PAID))
        .order_by(payments_table.c.settled_at, payments_table.c.id)
    )
    refunds = await conn.execute(
        select(refunds_table)
        .where(
            refunds_table.c.order_id == order.id,
            refunds_table.c.status == RefundStatus.SUCCEEDED.value,
        )
        .order_by(refunds_table.c.updated_at, refunds_table.c.id)
    )
    amount = order.amount if refund is None else int(refund.amount)
    tax = inclusive_tax(amount, rate_bp)
    document: dict[str, Any] = {
        "number": number,
        "label": label(order.store_id, number),
        "kind": kind,
        "issued_at": documents.iso(issued_at),
        "order_id": order.id,
        "store_id": order.store_id,
        "customer_id": order.customer_id,
        "currency": order.currency,
        "lines": [_line(item) for item in order.items],
        "order_amount": order.amount,
        "amount": amount,
        "tax": (
            None
            if rate_bp <= 0
            else {"rate_bp": rate_bp, "included": True, "amount": tax, "net": amount - tax}
        ),
        "refund": None if refund is None else _refund_entry(refund),
        "payments": [_payment_entry(p) for p in payments],
        "refunds": [_refund_entry(r) for r in refunds],
        "totals": {
            "paid": summary["paid"],
            "refunded": summary["refunded"],
            "outstanding": summary["outstanding"],
        },
    }
    raw = orjson.dumps(document)
    await conn.execute(
        receipts_table.insert(),
        {
            "store_id": order.store_id,
            "number": number,
            "order_id": order.id,
            "kind": kind,
            "refund_id": None if refund is None else refund.id,
            "tax_rate_bp": rate_bp,
            "document": raw.decode(),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "issued_at": issued_at,
        },
    )
    short = receipt_ref(document)
    await ledger.append(
        kind=RECEIPT_ISSUED,
        from_status=None,
        to_status=ISSUED,
        actor=actor,
        note=f"{kind} receipt {short['label']} of {amount}",
        extra={"receipt": short},
    )
    return short


def _line(item: Any) -> dict[str, Any]:
    # An order's items were validated when it was made; a hand-written row may lack a field.
    quantity = int(item.get("quantity", 0)) if isinstance(item, dict) else 0
    unit_price = int(item.get("unit_price", 0)) if isinstance(item, dict) else 0
    return {
        "sku": item.get("sku") if isinstance(item, dict) else None,
        "name": item.get("name") if isinstance(item, dict) else str(item),
        "quantity": quantity,
        "unit_price": unit_price,
        "amount": quantity * unit_price,
    }


def _payment_entry(payment: Any) -> dict[str, Any]:
    manual = payment.gateway == _MANUAL
    recorded = payment.last_gateway_response or {}
    return {
        "id": payment.id,
        "gateway": payment.gateway,
        "method": recorded.get("method") if manual else "online",
        "reference": (
            recorded.get("reference")
            if manual
            else payment.gateway_transaction_id or payment.gateway_ref
        ),
        "amount": int(payment.amount),
        "status": payment.status,
        "at": documents.iso(payment.settled_at),
    }


def _refund_entry(refund: Any) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment_id,
        "amount": int(refund.amount),
        "reason": refund.reason,
        "reference": refund.gateway_ref,
        "at": documents.iso(refund.updated_at),
    }
