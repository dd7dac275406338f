"""Manual payments: a POS terminal of the order's store (or an admin) records money taken at the
counter — COMPLETED at once, through the payment write path, audited with who recorded it."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from orders.models import Event, Payment
from tests.conftest import Service
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body, token

ALICE = token("alice")
POS1 = token("till-1", role="pos", store_id="store-1")
POS2 = token("till-9", role="pos", store_id="store-2")
ADMIN = token("ops", role="admin")


async def new_order(service: Service, method: str = "cash") -> dict[str, Any]:
    r = await service.http.post("/api/orders", json=order_body(method=method), headers=auth(ALICE))
    assert r.status_code == 201, r.text
    order: dict[str, Any] = r.json()["order"]
    return order


async def record(service: Service, order_id: str, tok: str = POS1, **body: Any) -> httpx.Response:
    return await service.http.post(
        f"/api/pos/orders/{order_id}/payments", json=body, headers=auth(tok)
    )


async def payment_rows(service: Service, order_id: str) -> list[Payment]:
    async with service.db.read() as session:
        return list(
            (await session.execute(select(Payment).where(Payment.order_id == order_id))).scalars()
        )


async def test_a_cash_order_is_settled_by_the_cash_the_store_took(service: Service) -> None:
    order = await new_order(service)
    assert order["payment_summary"]["outstanding"] == order["amount"]
    r = await record(service, order["id"], method="cash", amount=order["amount"], reference="Z-1")
    assert r.status_code == 201, r.text
    payment, after = r.json()["payment"], r.json()["order"]
    assert payment["status"] == "COMPLETED" and payment["gateway"] == "manual"
    assert payment["method"] == "cash" and payment["reference"] == "Z-1"
    assert payment["recorded_by"] == "pos:till-1"
    assert after["payment_status"] == "COMPLETED" and after["status"] == "CONFIRMED"
    assert after["payment_summary"]["paid"] == order["amount"]
    assert after["payment_summary"]["outstanding"] == 0
    # Audited: the payment.status event says who recorded it, on the store's stream too.
    async with service.db.read() as session:
        event = (
            await session.execute(
                select(Event).where(Event.order_id == order["id"], Event.kind == "payment.status")
            )
        ).scalar_one()
    assert event.actor == "pos:till-1" and event.source == "pos"
    assert event.to_status == "COMPLETED" and "recorded by pos:till-1" in event.data["note"]
    assert event.data["order"]["payment_summary"]["outstanding"] == 0
    got = await service.http.get(f"/api/orders/{order['id']}", headers=auth(ALICE))
    assert got.json()["payments"][0]["method"] == "cash"


async def test_an_online_order_paid_in_two_parts_at_the_counter_is_confirmed_by_the_second(
    service: Service,
) -> None:
    order = await new_order(service, "online")
    amount = order["amount"]
    first = await record(service, order["id"], method="card_terminal", amount=amount * 60 // 100)
    assert first.status_code == 201, first.text
    assert first.json()["order"]["status"] == "PENDING_PAYMENT"
    assert first.json()["order"]["payment_summary"]["outstanding"] == amount - amount * 60 // 100
    second = await record(
        service, order["id"], method="bank_transfer", amount=amount - amount * 60 // 100
    )
    assert second.status_code == 201, second.text
    assert second.json()["order"]["status"] == "CONFIRMED"
    assert second.json()["order"]["payment_summary"]["outstanding"] == 0
    assert sum(p.amount for p in await payment_rows(service, order["id"])) == amount


async def test_amounts_are_above_zero_and_at_most_what_is_outstanding(service: Service) -> None:
    order = await new_order(service)
    for bad in (0, -1, 1.5, "100", None):
        r = await record(service, order["id"], method="cash", amount=bad)
        assert_error(r, 422, "validation_error")
    r = await record(service, order["id"], method="cash", amount=order["amount"] + 1)
    error = assert_error(r, 422, "validation_error")
    assert error["field"] == "amount" and error["outstanding"] == order["amount"]
    assert_error(
        await record(service, order["id"], method="coins", amount=1), 422, "validation_error"
    )
    assert await payment_rows(service, order["id"]) == []
    assert (
        await record(service, order["id"], method="cash", amount=order["amount"])
    ).status_code == 201
    r = await record(service, order["id"], method="cash", amount=1)
    assert assert_error(r, 422, "validation_error")["outstanding"] == 0
    assert len(await payment_rows(service, order["id"])) == 1


async def test_only_the_orders_store_or_an_admin_records_a_payment(service: Service) -> None:
    order = await new_order(service)
    assert_error(
        await record(service, order["id"], ALICE, method="cash", amount=1), 403, "forbidden"
    )
    assert_error(
        await record(service, order["id"], POS2, method="cash", amount=1), 404, "not_found"
    )
    assert_error(
        await record(service, "ord_" + "0" * 24, POS1, method="cash", amount=1), 404, "not_found"
    )
    assert await payment_rows(service, order["id"]) == []
    r = await record(service, order["id"], ADMIN, method="other", amount=1)
    assert r.status_code == 201, r.text
    assert r.json()["payment"]["recorded_by"] == "admin:ops"


async def test_a_cancelled_order_takes_no_payment(service: Service) -> None:
    order = await new_order(service)
    r = await service.http.post(f"/api/orders/{order['id']}/cancel", json={}, headers=auth(POS1))
    assert r.status_code == 200
    r = await record(service, order["id"], method="cash", amount=1)
    assert_error(r, 409, "not_payable")
    assert await payment_rows(service, order["id"]) == []


async def test_a_retried_recording_with_its_idempotency_key_takes_the_money_once(
    service: Service,
) -> None:
    order = await new_order(service)
    headers = {**auth(POS1), "Idempotency-Key": "till-1-sale-42"}
    body = {"method": "cash", "amount": 100}
    url = f"/api/pos/orders/{order['id']}/payments"
    first = await service.http.post(url, json=body, headers=headers)
    again = await service.http.post(url, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    async with service.db.read() as session:
        count = (
            await session.execute(
                select(func.count()).select_from(Payment).where(Payment.order_id == order["id"])
            )
        ).scalar_one()
    assert count == 1
