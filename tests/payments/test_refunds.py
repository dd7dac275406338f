"""Refunds as their own records: partial then full, never more than refundable, spread over the
payments newest first, manual ones recorded at once, gateway ones sent through the adapter and
never FAILED by a transport error; the totals after every step equal what the rows say."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from orders.models import Payment, Refund
from reconciler.worker import Reconciler
from tests.conftest import Service, StartService
from tests.payments.helpers import online_order, payment_row, start_payment, wait_for_payment
from tests.payments.test_money import rows_say
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body, token
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.servers import free_port

ALICE = token("alice")
POS1 = token("till-1", role="pos", store_id="store-1")
POS2 = token("till-9", role="pos", store_id="store-2")
DEAD = f"http://127.0.0.1:{free_port()}"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def paying(start_service: StartService, sandbox: Sandbox) -> Service:
    return await start_service(**sandbox.settings())


async def cash_paid(service: Service, *parts: int) -> dict[str, Any]:
    """A cash order paid at the counter in ``parts`` (amounts; default: all at once)."""
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(ALICE))
    order: dict[str, Any] = r.json()["order"]
    for part in parts or (order["amount"],):
        r = await service.http.post(
            f"/api/pos/orders/{order['id']}/payments",
            json={"method": "cash", "amount": part},
            headers=auth(POS1),
        )
        assert r.status_code == 201, r.text
    return order


async def refund(service: Service, order_id: str, tok: str = POS1, **body: Any) -> httpx.Response:
    return await service.http.post(
        f"/api/orders/{order_id}/refunds", json={"reason": "cold soup", **body}, headers=auth(tok)
    )


async def refund_rows(service: Service, order_id: str) -> list[Refund]:
    async with service.db.read() as session:
        return list(
            (await session.execute(select(Refund).where(Refund.order_id == order_id))).scalars()
        )


async def payment_statuses(service: Service, order_id: str) -> dict[str, str]:
    async with service.db.read() as session:
        rows = (
            await session.execute(select(Payment).where(Payment.order_id == order_id))
        ).scalars()
        return {p.id: p.status for p in rows}


async def test_a_partial_then_a_full_refund_of_a_cash_payment(service: Service) -> None:
    order = await cash_paid(service)
    amount = order["amount"]
    r = await refund(service, order["id"], amount=1000)
    assert r.status_code == 201, r.text
    (first,) = r.json()["refunds"]
    assert first["amount"] == 1000 and first["status"] == "SUCCEEDED"
    assert r.json()["order"]["payment_summary"] == await rows_say(service, order["id"])
    assert r.json()["order"]["payment_summary"]["refunded"] == 1000
    assert list((await payment_statuses(service, order["id"])).values()) == ["PARTIALLY_REFUNDED"]
    # Full by default: the rest.
    r = await refund(service, order["id"])
    assert r.status_code == 201, r.text
    assert [x["amount"] for x in r.json()["refunds"]] == [amount - 1000]
    summary = r.json()["order"]["payment_summary"]
    assert summary == await rows_say(service, order["id"])
    assert summary["refunded"] == amount and summary["can_refund"] is False
    assert list((await payment_statuses(service, order["id"])).values()) == ["REFUNDED"]
    assert_error(await refund(service, order["id"]), 409, "nothing_to_refund")


async def test_more_than_refundable_is_422_and_writes_nothing(service: Service) -> None:
    order = await cash_paid(service)
    r = await refund(service, order["id"], amount=order["amount"] + 1)
    error = assert_error(r, 422, "validation_error")
    assert error["field"] == "amount" and error["refundable"] == order["amount"]
    for bad in (0, -1, 2.5):
        assert_error(await refund(service, order["id"], amount=bad), 422, "validation_error")
    assert_error(
        await service.http.post(
            f"/api/orders/{order['id']}/refunds", json={"amount": 1}, headers=auth(POS1)
        ),
        422,
        "validation_error",
    )
    assert await refund_rows(service, order["id"]) == []


async def test_a_refund_is_spread_over_the_payments_newest_first(service: Service) -> None:
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(ALICE))
    total = r.json()["order"]["amount"]
    older, newer = total * 60 // 100, total - total * 60 // 100
    order = await cash_paid(service, older, newer)
    r = await refund(service, order["id"], amount=newer + 100)
    assert r.status_code == 201, r.text
    parts = sorted((x["amount"] for x in r.json()["refunds"]), reverse=True)
    assert parts == [newer, 100]
    statuses = sorted((await payment_statuses(service, order["id"])).values())
    assert statuses == ["PARTIALLY_REFUNDED", "REFUNDED"]
    assert r.json()["order"]["payment_summary"] == await rows_say(service, order["id"])


async def test_only_the_orders_store_or_an_admin_refunds(service: Service) -> None:
    order = await cash_paid(service)
    assert_error(await refund(service, order["id"], ALICE), 403, "forbidden")
    assert_error(await refund(service, order["id"], POS2), 404, "not_found")
    assert await refund_rows(service, order["id"]) == []
    r = await refund(service, order["id"], token("ops", role="admin"), amount=1)
    assert r.status_code == 201, r.text


async def test_a_gateway_payment_is_refunded_through_its_adapter(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id = await online_order(paying)
    started = await start_payment(paying, order_id)
    row = await payment_row(paying, started["payment"]["id"])
    await sandbox.act(row.gateway_ref, "approve")
    await wait_for_payment(paying, row.id, "COMPLETED")
    r = await refund(paying, order_id, amount=500)
    assert r.status_code == 201, r.text
    (sent,) = r.json()["refunds"]
    assert sent["status"] == "SUCCEEDED" and sent["gateway_ref"].startswith("sbx_re_")
    assert r.json()["order"]["payment_summary"] == await rows_say(paying, order_id)
    assert (await payment_row(paying, row.id)).status == "PARTIALLY_REFUNDED"


async def test_a_refund_whose_gateway_is_down_stays_requested_never_failed(
    paying: Service, sandbox: Sandbox, start_service: StartService
) -> None:
    order_id = await online_order(paying)
    started = await start_payment(paying, order_id)
    row = await payment_row(paying, started["payment"]["id"])
    await sandbox.act(row.gateway_ref, "approve")
    await wait_for_payment(paying, row.id, "COMPLETED")
    # A second instance on the same database whose sandbox address answers nothing.
    cut_off = await start_service(**{**sandbox.settings(), "sandbox_api_base": DEAD})
    r = await refund(cut_off, order_id)
    assert r.status_code == 201, r.text
    (kept,) = r.json()["refunds"]
    assert kept["status"] == "REQUESTED"
    summary = r.json()["order"]["payment_summary"]
    assert summary["refunded"] == 0 and summary["can_refund"] is False
    assert summary == await rows_say(paying, order_id)
    assert (await payment_row(paying, row.id)).status == "COMPLETED"
    # No second refund while this one is in flight.
    assert_error(await refund(paying, order_id), 409, "nothing_to_refund")
    # The gateway is back (an instance that reaches it): the reconciler sends it again, by the
    # same reference, and it settles once.
    # It is due after a backoff of at most a second (its first failure).
    reconciler = Reconciler(paying.services.settlement)
    async with asyncio.timeout(10):
        while (await refund_rows(paying, order_id))[0].status != "SUCCEEDED":
            await reconciler.run_once()
            await asyncio.sleep(0.2)
    (settled,) = await refund_rows(paying, order_id)
    assert settled.id == kept["id"] and settled.status == "SUCCEEDED"
    assert (await payment_row(paying, row.id)).status == "REFUNDED"
    assert (await rows_say(paying, order_id))["refunded"] == row.amount
    await reconciler.run_once()
    assert [r.status for r in await refund_rows(paying, order_id)] == ["SUCCEEDED"]
    assert sandbox.server.stats["refunds"] == 1
