"""Single flight: a webhook, a read-triggered check, a verify call and a scheduled check of
the same payment, all in flight at once → one gateway call, one state change."""

from __future__ import annotations

import asyncio

from gateways.sandbox_server import Chaos
from orders.hooks import Hooks
from reconciler.worker import Reconciler
from tests.conftest import StartService
from tests.payments.helpers import (
    events_of,
    online_order,
    payment_row,
    post_webhook,
    start_payment,
    webhook_body,
)
from tests.reconciler.support import FAST_SCHEDULE
from tests.support.clients import auth, token
from tests.support.sandbox import running_sandbox

ALICE = token("alice")


class HoldTheGatewayCall(Hooks):
    """Holds every gateway status call at its start until released; counts them."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def before_gateway_check(self, payment_id: str) -> None:
        self.calls += 1
        self.entered.set()
        await self.release.wait()


async def test_four_callers_at_once_make_one_gateway_call_and_one_state_change(
    start_service: StartService,
) -> None:
    hooks = HoldTheGatewayCall()
    async with running_sandbox(Chaos(drop=100)) as sandbox:  # its own webhooks are dropped
        service = await start_service(
            **sandbox.settings(),
            hooks=hooks,
            sandbox_poll_schedule=FAST_SCHEDULE,
            payment_read_check_after=0,
            payment_read_check_timeout=10,
        )
        order_id = await online_order(service)
        payment = await payment_row(
            service, (await start_payment(service, order_id))["payment"]["id"]
        )
        await sandbox.act(payment.gateway_ref, "approve")
        await asyncio.sleep(0.2)  # past the first check of the compressed schedule
        calls_before = sandbox.status_calls

        reconciler = Reconciler(service.services.settlement, lease=30)
        scheduled = asyncio.create_task(reconciler.run_once())
        async with asyncio.timeout(10):
            await hooks.entered.wait()  # the scheduled check holds the gateway call open
        read = asyncio.create_task(service.http.get(f"/api/orders/{order_id}", headers=auth(ALICE)))
        verify = asyncio.create_task(
            service.http.post(f"/api/orders/{order_id}/payments/verify", headers=auth(ALICE))
        )
        webhook = await post_webhook(service, webhook_body(payment, "succeeded"))
        assert webhook.status_code == 200 and webhook.json()["outcome"] == "apply", webhook.text
        registry = service.services.metrics.registry
        async with asyncio.timeout(10):  # until the read and the verify have joined the check
            while (registry.get_sample_value("payment_checks_shared_total") or 0) < 2:
                await asyncio.sleep(0.01)
        assert not read.done() and not verify.done()
        hooks.release.set()
        read_r, verify_r = await asyncio.gather(read, verify)
        await scheduled
        status_calls = sandbox.status_calls - calls_before

    assert hooks.calls == 1 and status_calls == 1
    assert read_r.status_code == 200 and verify_r.status_code == 200, (read_r.text, verify_r.text)
    assert read_r.json()["order"]["status"] == "CONFIRMED"
    assert read_r.json()["status_updated"] is True
    assert verify_r.json()["payment"]["status"] == "COMPLETED"
    assert verify_r.json()["status_updated"] is True
    changes = [e.to_status for e in await events_of(service, order_id, "payment.status")]
    assert changes == ["INITIATED", "COMPLETED"]
