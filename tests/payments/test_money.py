"""The payment summary on every order snapshot: derived from the payment and refund rows.

After every step the summary in each place a client can see it (the write's answer, GET, the
lists, the stream's snapshot, the event) equals what the rows say, summed here independently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from orders.models import Event, Payment, Refund, utcnow
from tests.conftest import Service, StartService
from tests.payments.helpers import online_order, start_payment, wait_for_payment
from tests.support.clients import auth, order_body, token
from tests.support.sandbox import Sandbox, running_sandbox

ALICE = token("alice")
POS1 = token("till-1", role="pos", store_id="store-1")
PAID = {"COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def paying(start_service: StartService, sandbox: Sandbox) -> Service:
    return await start_service(**sandbox.settings())


async def rows_say(service: Service, order_id: str) -> dict[str, Any]:
    """The summary as the rows have it, summed here with no help from server/money.py."""
    async with service.db.read() as session:
        payments = list(
            (await session.execute(select(Payment).where(Payment.order_id == order_id))).scalars()
        )
        refunds = list(
            (await session.execute(select(Refund).where(Refund.order_id == order_id))).scalars()
        )
    r = await service.http.get(f"/api/orders/{order_id}", headers=auth(ALICE))
    order = r.json()["order"]
    paid = sum(p.amount for p in payments if p.status in PAID)
    live = sum(p.amount for p in payments if p.status in ("INITIATED", "PENDING"))
    refunded = sum(x.amount for x in refunds if x.status == "SUCCEEDED")
    in_flight = sum(x.amount for x in refunds if x.status in ("REQUESTED", "PENDING"))
    closed = order["status"] in ("CANCELLED", "EXPIRED")
    outstanding = 0 if closed else max(order["amount"] - paid, 0)
    return {
        "paid": paid,
        "refunded": refunded,
        "outstanding": outstanding,
        "currency": order["currency"],
        "can_pay": outstanding > live,
        "can_refund": paid - refunded - in_flight > 0,
    }


async def every_view(service: Service, order_id: str) -> list[dict[str, Any]]:
    """The order's summary in GET, the customer's list, the store's list, the stream snapshot."""
    views = []
    one = (await service.http.get(f"/api/orders/{order_id}", headers=auth(ALICE))).json()
    views.append(one["order"]["payment_summary"])
    for path, tok in (("/api/orders", ALICE), ("/api/pos/orders", POS1)):
        listed = (await service.http.get(path, headers=auth(tok))).json()["orders"]
        views.append(next(o for o in listed if o["id"] == order_id)["payment_summary"])
    snapshot = (await service.http.get("/api/events?snapshot=true", headers=auth(ALICE))).json()
    open_orders = [o for o in snapshot["orders"] if o["id"] == order_id]
    views.extend(o["payment_summary"] for o in open_orders)
    return views


async def last_event_summary(service: Service, order_id: str) -> dict[str, Any]:
    async with service.db.read() as session:
        event = (
            await session.execute(
                select(Event)
                .where(
                    Event.order_id == order_id, Event.kind.in_(("order.status", "payment.status"))
                )
                .order_by(Event.id.desc())
                .limit(1)
            )
        ).scalar_one()
    summary: dict[str, Any] = event.data["order"]["payment_summary"]
    return summary


async def test_a_new_cash_order_owes_its_amount_everywhere(service: Service) -> None:
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(ALICE))
    assert r.status_code == 201
    order = r.json()["order"]
    expected = {
        "paid": 0,
        "refunded": 0,
        "outstanding": order["amount"],
        "currency": "INR",
        "can_pay": True,
        "can_refund": False,
    }
    assert order["payment_summary"] == expected
    assert await rows_say(service, order["id"]) == expected
    views = await every_view(service, order["id"])
    assert len(views) == 4 and all(v == expected for v in views)
    assert await last_event_summary(service, order["id"]) == expected


async def test_a_cancelled_order_owes_nothing(service: Service) -> None:
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(POS1))
    order_id = r.json()["order"]["id"]
    r = await service.http.post(f"/api/orders/{order_id}/cancel", json={}, headers=auth(POS1))
    assert r.status_code == 200, r.text
    summary = r.json()["order"]["payment_summary"]
    assert summary["outstanding"] == 0 and summary["can_pay"] is False
    assert await last_event_summary(service, order_id) == summary


async def test_the_totals_after_every_payment_step_equal_what_the_rows_say(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id = await online_order(paying)
    first = await rows_say(paying, order_id)
    assert first["outstanding"] > 0 and first["can_pay"] and not first["can_refund"]
    assert all(v == first for v in await every_view(paying, order_id))

    # A live attempt covers what is owed: nothing more can be paid while it runs.
    started = await start_payment(paying, order_id)
    live = await rows_say(paying, order_id)
    assert live["paid"] == 0 and live["can_pay"] is False
    assert all(v == live for v in await every_view(paying, order_id))

    row = await wait_for_payment(paying, started["payment"]["id"], "INITIATED")
    await sandbox.act(row.gateway_ref, "approve")
    await wait_for_payment(paying, row.id, "COMPLETED")
    done = await rows_say(paying, order_id)
    assert done["paid"] == row.amount and done["outstanding"] == 0
    assert done["can_pay"] is False and done["can_refund"] is True
    assert all(v == done for v in await every_view(paying, order_id))
    # The payment.status event (and the CONFIRMED one) carry the totals as of their commit.
    assert await last_event_summary(paying, order_id) == done

    # A refund row: in flight it blocks another refund, settled it counts as refunded.
    now = utcnow()
    async with paying.db.transaction() as session:
        await session.execute(
            insert(Refund).values(
                id="ref_test_1",
                order_id=order_id,
                payment_id=row.id,
                amount=row.amount,
                currency=row.currency,
                status="PENDING",
                reason="test",
                idempotency_key="test:1",
                created_at=now,
                updated_at=now,
            )
        )
    pending = await rows_say(paying, order_id)
    assert pending["refunded"] == 0 and pending["can_refund"] is False
    assert all(v == pending for v in await every_view(paying, order_id))
    async with paying.db.transaction() as session:
        await session.execute(
            update(Refund).where(Refund.id == "ref_test_1").values(status="SUCCEEDED")
        )
    refunded = await rows_say(paying, order_id)
    assert refunded["refunded"] == row.amount and refunded["outstanding"] == 0
    assert all(v == refunded for v in await every_view(paying, order_id))
