"""Helpers for payment tests: place an online order, start its payment, wait for a state."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from server.models import Event, Payment
from tests.conftest import Service
from tests.support.clients import auth, order_body, token


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
