"""A webhook is matched to our payment by the reference the adapter parsed, not by raw fields."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import Service, StartService
from tests.payments.helpers import (
    online_order,
    payment_row,
    post_webhook,
    start_payment,
    webhook_body,
)
from tests.support.sandbox import Sandbox, running_sandbox


@pytest.fixture
async def paying(start_service: StartService) -> AsyncIterator[tuple[Service, Sandbox]]:
    async with running_sandbox() as sandbox:
        yield await start_service(**sandbox.settings()), sandbox


async def test_a_webhook_naming_a_gateway_id_we_never_saw_is_matched_by_our_reference(
    paying: tuple[Service, Sandbox],
) -> None:
    service, _ = paying
    order_id = await online_order(service)
    payment = await payment_row(service, (await start_payment(service, order_id))["payment"]["id"])
    # Neither the gateway id nor the metadata match: only the event's own "reference" does.
    body = webhook_body(payment, "succeeded", id="sbx_pay_unseen", metadata={})
    r = await post_webhook(service, body)
    assert r.status_code == 200 and r.json()["outcome"] == "apply", r.text
    assert (await payment_row(service, payment.id)).status == "COMPLETED"
