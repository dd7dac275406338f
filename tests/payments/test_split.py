"""Split payments and retries: an attempt pays part of an order; the order is CONFIRMED only
when what is paid covers its amount; one live attempt at a time, named by the 409."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import Service, StartService
from tests.payments.helpers import online_order, payment_row, wait_for_payment
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
