"""Helpers for payment tests: place an online order, start its payment, wait for a state."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
from sqlalchemy import func, select

from gateways.sandbox_server import SIGNATURE_HEADER
from gateways.signing import sign
from orders.models import Event, Payment, Refund, WebhookReceipt
from tests.conftest import Service
from tests.support.clients import auth, order_body, token
from tests.support.sandbox import SANDBOX_SECRET


async def online_order(service: Service, customer: str = "alice", **overrides: Any) -> str:
    """Create an online order for ``customer``; its id."""
    r = await service.http.post(
        "/api/orders", json=order_body(method="online", **overrides), headers=auth(token(customer))
    )
    assert r.status_code == 201, r.text
    order_id: str = r.json()["order"]["id"]
    return order_id


async def start_payment(
    service: Service, order_id: str, customer: str = "alice", gateway: str = "sandbox"
) -> dict[str, Any]:
    """Start a payment of ``order_id``; the 201 body."""
    r = await service.http.post(
        f"/api/orders/{order_id}/payments",
        json={"gateway": gateway},
        headers=auth(token(customer)),
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def payment_row(service: Service, payment_id: str) -> Payment:
    """The payment's row as the database has it now."""
    async with service.db.read() as session:
        payment = await session.get(Payment, payment_id)
    assert payment is not None
    return payment


async def wait_for_payment(
    service: Service, payment_id: str, status: str, timeout: float = 10.0
) -> Payment:
    """Wait until the payment is ``status`` in the database."""
    async with asyncio.timeout(timeout):
        while True:
            payment = await payment_row(service, payment_id)
            if payment.status == status:
                return payment
            await asyncio.sleep(0.05)


async def events_of(service: Service, order_id: str, kind: str | None = None) -> list[Event]:
    """The order's events, oldest first (of one kind if given)."""
    statement = select(Event).where(Event.order_id == order_id).order_by(Event.id)
    if kind is not None:
        statement = statement.where(Event.kind == kind)
    async with service.db.read() as session:
        return list((await session.execute(statement)).scalars())


def webhook_body(
    payment: Payment, status: str, *, event_id: str | None = None, **overrides: Any
) -> bytes:
    """A sandbox webhook about ``payment`` saying ``status`` (as the sandbox sends it)."""
    obj: dict[str, Any] = {
        "object": "payment",
        "id": payment.gateway_ref,
        "reference": payment.id,
        "status": status,
        "amount": payment.amount,
        "currency": payment.currency,
        "amount_refunded": 0,
        "transaction_id": "sbx_txn_test" if status == "succeeded" else None,
        "metadata": {"order_id": payment.order_id, "payment_id": payment.id},
        "created": int(time.time()),
    }
    obj.update(overrides)
    event = {
        "id": event_id or "evt_" + secrets.token_hex(10),
        "type": f"payment.{status}",
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return json.dumps(event, separators=(",", ":")).encode()


async def post_webhook(
    service: Service,
    body: bytes,
    *,
    gateway: str = "sandbox",
    secret: str = SANDBOX_SECRET,
    at: float | None = None,
    signature: str | None = None,
) -> httpx.Response:
    """POST a sandbox-signed webhook (signed now, or ``at``) to ``/webhooks/<gateway>``."""
    header = signature or sign(body, secret, int(at if at is not None else time.time()))
    return await service.http.post(
        f"/webhooks/{gateway}",
        content=body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: header},
    )


async def table_counts(service: Service) -> dict[str, int]:
    """Rows per table that a webhook could write to."""
    out: dict[str, int] = {}
    async with service.db.read() as session:
        for model in (Event, Payment, WebhookReceipt, Refund):
            count = await session.execute(select(func.count()).select_from(model))
            out[model.__tablename__] = int(count.scalar_one())
    return out
