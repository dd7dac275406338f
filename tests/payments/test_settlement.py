"""The payment write path over real HTTP: start, webhooks, cascade, audit, refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import Service, StartService
from tests.payments.helpers import (
    events_of,
    online_order,
    payment_row,
    start_payment,
    wait_for_payment,
)
from tests.support.clients import auth, token
from tests.support.sandbox import Sandbox, running_sandbox


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def paying(start_service: StartService, sandbox: Sandbox) -> Service:
    return await start_service(**sandbox.settings())


async def test_an_approved_sandbox_payment_confirms_the_order_through_its_webhook(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id = await online_order(paying)
    body = await start_payment(paying, order_id)
    payment = body["payment"]
    assert payment["status"] == "INITIATED"
    assert body["redirect_url"].startswith(sandbox.url + "/pay/")
    row = await payment_row(paying, payment["id"])
    assert row.started_at is not None and row.gateway_ref.startswith("sbx_pay_")
    await sandbox.act(row.gateway_ref, "approve")
    await wait_for_payment(paying, payment["id"], "COMPLETED")
    r = await paying.http.get(f"/api/orders/{order_id}", headers=auth(token("alice")))
    assert r.json()["order"]["status"] == "CONFIRMED"
    assert r.json()["order"]["payment_status"] == "COMPLETED"
    kinds = [(e.kind, e.to_status) for e in await events_of(paying, order_id)]
    assert kinds == [
        ("order.status", "PENDING_PAYMENT"),
        ("payment.status", "INITIATED"),
        ("payment.status", "COMPLETED"),
        ("order.status", "CONFIRMED"),
    ]
