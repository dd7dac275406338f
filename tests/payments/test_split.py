"""Split payments and retries: an attempt pays part of an order; the order is CONFIRMED only
when what is paid covers its amount; one live attempt at a time, named by the 409."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from orders.models import Refund
from tests.conftest import Service, StartService
from tests.payments.helpers import events_of, online_order, payment_row, wait_for_payment
from tests.payments.test_money import rows_say
from tests.reconciler.support import reconciler_for
from tests.support.asserts import assert_error
from tests.support.clients import auth, token
from tests.support.sandbox import Sandbox, running_sandbox

ALICE = token("alice")


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def paying(start_service: StartService, sandbox: Sandbox) -> Service:
    return await start_service(**sandbox.settings())


async def pay(service: Service, order_id: str, **body: Any) -> httpx.Response:
    return await service.http.post(
        f"/api/orders/{order_id}/payments",
        json={"gateway": "sandbox", **body},
        headers=auth(ALICE),
    )


async def order_of(service: Service, order_id: str) -> dict[str, Any]:
    r = await service.http.get(f"/api/orders/{order_id}", headers=auth(ALICE))
    order: dict[str, Any] = r.json()["order"]
    return order


async def settle(service: Service, sandbox: Sandbox, payment_id: str, action: str) -> None:
    row = await payment_row(service, payment_id)
    await sandbox.act(row.gateway_ref, action)
    await wait_for_payment(service, payment_id, "COMPLETED" if action == "approve" else "FAILED")


async def test_60_then_40_percent_confirms_only_after_the_second_completes(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id = await online_order(paying)
    total = (await order_of(paying, order_id))["amount"]
    part = total * 60 // 100
    first = await pay(paying, order_id, amount=part)
    assert first.status_code == 201, first.text
    assert first.json()["payment"]["amount"] == part
    await settle(paying, sandbox, first.json()["payment"]["id"], "approve")
    order = await order_of(paying, order_id)
    assert order["status"] == "PENDING_PAYMENT"
    assert order["payment_summary"]["paid"] == part
    assert order["payment_summary"]["outstanding"] == total - part
    assert order["payment_summary"]["can_pay"] is True
    # The rest: the default amount is what is outstanding.
    second = await pay(paying, order_id)
    assert second.status_code == 201, second.text
    assert second.json()["payment"]["amount"] == total - part
    await settle(paying, sandbox, second.json()["payment"]["id"], "approve")
    order = await order_of(paying, order_id)
    assert order["status"] == "CONFIRMED"
    assert order["payment_summary"]["paid"] == total
    assert order["payment_summary"]["outstanding"] == 0
    assert_error(await pay(paying, order_id), 409, "not_payable")


async def test_more_than_outstanding_is_422_and_starts_nothing(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id = await online_order(paying)
    total = (await order_of(paying, order_id))["amount"]
    error = assert_error(await pay(paying, order_id, amount=total + 1), 422, "validation_error")
    assert error["field"] == "amount" and error["outstanding"] == total
    for bad in (0, -5, 1.5, "10"):
        assert_error(await pay(paying, order_id, amount=bad), 422, "validation_error")
    first = await pay(paying, order_id, amount=total // 2)
    await settle(paying, sandbox, first.json()["payment"]["id"], "approve")
    error = assert_error(await pay(paying, order_id, amount=total), 422, "validation_error")
    assert error["outstanding"] == total - total // 2
    r = await paying.http.get(f"/api/orders/{order_id}", headers=auth(ALICE))
    assert len(r.json()["payments"]) == 1


async def test_a_live_attempt_blocks_a_second_one_naming_it(paying: Service) -> None:
    order_id = await online_order(paying)
    total = (await order_of(paying, order_id))["amount"]
    first = await pay(paying, order_id, amount=total // 2)
    live_id = first.json()["payment"]["id"]
    for amount in (total // 2, total - total // 2):
        error = assert_error(await pay(paying, order_id, amount=amount), 409, "payment_in_progress")
        assert error["payment_id"] == live_id
    # Half is live, half is owed and payable once the live attempt settles.
    assert (await order_of(paying, order_id))["payment_summary"]["can_pay"] is True


async def test_after_a_failed_part_a_retry_pays_what_is_outstanding(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id = await online_order(paying)
    total = (await order_of(paying, order_id))["amount"]
    first = await pay(paying, order_id, amount=total // 4)
    await settle(paying, sandbox, first.json()["payment"]["id"], "decline")
    assert (await order_of(paying, order_id))["payment_summary"]["outstanding"] == total
    retry = await pay(paying, order_id)
    assert retry.status_code == 201, retry.text
    assert retry.json()["payment"]["id"] != first.json()["payment"]["id"]
    assert retry.json()["payment"]["amount"] == total
    await settle(paying, sandbox, retry.json()["payment"]["id"], "approve")
    assert (await order_of(paying, order_id))["status"] == "CONFIRMED"


async def test_a_late_third_success_is_flagged_and_its_excess_refunded_exactly_once(
    start_service: StartService, sandbox: Sandbox
) -> None:
    # Attempts time out after 1 s of polling (then EXPIRED); the tail keeps asking after.
    service = await start_service(
        **sandbox.settings(),
        sandbox_poll_schedule="first=0.2 0.2x1 then=0.3 timeout=1 tail=0.3x5,1 horizon=30",
        sandbox_rate_limit="",
    )
    order_id = await online_order(service)
    total = (await order_of(service, order_id))["amount"]
    sixty, forty, twenty = total * 60 // 100, total - total * 60 // 100, total * 20 // 100
    # 60 % paid.
    first = await pay(service, order_id, amount=sixty)
    await settle(service, sandbox, first.json()["payment"]["id"], "approve")
    # A second attempt for the 40 % left is left pending at the bank; it times out here.
    second = (await pay(service, order_id)).json()["payment"]
    assert second["amount"] == forty
    late = await payment_row(service, second["id"])
    await sandbox.act(late.gateway_ref, "pending")
    await asyncio.sleep(1.1)
    async with reconciler_for(service) as reconciler:
        await reconciler.run_once()
    await wait_for_payment(service, late.id, "EXPIRED")
    # A third attempt pays 20 %: 80 % paid, still PENDING_PAYMENT.
    third = await pay(service, order_id, amount=twenty)
    assert third.status_code == 201, third.text
    await settle(service, sandbox, third.json()["payment"]["id"], "approve")
    order = await order_of(service, order_id)
    assert order["status"] == "PENDING_PAYMENT" and order["payment_summary"] == await rows_say(
        service, order_id
    )
    # The bank authorises the second attempt late: 120 % paid.
    await sandbox.act(late.gateway_ref, "approve")
    await wait_for_payment(service, late.id, "COMPLETED")
    order = await order_of(service, order_id)
    assert order["status"] == "CONFIRMED" and order["needs_review"] is True
    excess = sixty + forty + twenty - total
    assert 0 < excess < forty  # the excess, not the whole late payment
    async with reconciler_for(service) as reconciler:
        for _ in range(3):  # the refund is due at once; more passes change nothing
            await reconciler.run_once()
    async with service.db.read() as session:
        refunds = list((await session.execute(select(Refund))).scalars())
    assert [(r.payment_id, r.amount, r.status, r.reason) for r in refunds] == [
        (late.id, excess, "SUCCEEDED", "late_success")
    ]
    assert sandbox.server.stats["refunds"] == 1
    assert (await payment_row(service, late.id)).status == "PARTIALLY_REFUNDED"
    summary = (await order_of(service, order_id))["payment_summary"]
    assert summary == await rows_say(service, order_id)
    assert summary["paid"] == total + excess and summary["refunded"] == excess
    # The late success was applied once: one COMPLETED event for it.
    completed = [
        e
        for e in await events_of(service, order_id, "payment.status")
        if e.to_status == "COMPLETED" and e.data["payment"]["id"] == late.id
    ]
    assert len(completed) == 1
