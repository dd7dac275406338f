"""The sandbox gateway over real HTTP (uvicorn): page, status API, refunds, signed webhooks, chaos.

Webhooks are sent by the sandbox over HTTP to a receiving test server and verified by the
sandbox adapter, exactly as the service's webhook endpoint will.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from gateways.base import (
    GatewayRejected,
    GatewayUnavailable,
    InvalidSignature,
    PaymentRequest,
    PaymentStart,
    PaymentStatus,
    RefundRequest,
    RefundStatus,
    WebhookEvent,
)
from gateways.sandbox import SandboxConfig, SandboxGateway
from gateways.sandbox_server import SandboxServer, SandboxServerConfig, create_app
from tests.support.servers import ROOT, free_port, serve_in_process, stop_process

SECRET = "sbx_whsec_test"


@dataclass
class Rig:
    """A running sandbox, its adapter, and the webhooks a receiving server got."""

    base: str
    server: SandboxServer
    gateway: SandboxGateway
    http: httpx.AsyncClient
    received: asyncio.Queue[tuple[dict[str, str], bytes]]

    async def chaos(self, **knobs: float) -> None:
        response = await self.http.put(self.base + "/control/chaos", json=knobs)
        assert response.status_code == 200, response.text

    async def start(self, reference: str, amount: int = 1500) -> PaymentStart:
        return await self.gateway.start_payment(
            PaymentRequest(
                reference=reference,
                amount=amount,
                currency="INR",
                return_url="http://shop.test/back",
                metadata={"order_id": f"ord_{reference}"},
            )
        )

    async def click(self, start: PaymentStart, action: str) -> httpx.Response:
        assert start.redirect_url is not None
        return await self.http.post(f"{start.redirect_url}/{action}")

    async def webhook(self, timeout: float = 5) -> WebhookEvent:
        async with asyncio.timeout(timeout):
            headers, raw = await self.received.get()
        return self.gateway.verify_webhook(headers, raw)

    async def stats(self) -> dict[str, Any]:
        counters: dict[str, Any] = (await self.http.get(self.base + "/control/stats")).json()
        return counters


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[tuple[str, asyncio.Queue[tuple[dict[str, str], bytes]]]]:
    queue: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def receive(request: Request) -> Response:
        queue.put_nowait((dict(request.headers), await request.body()))
        return Response(status_code=200)

    app = Starlette(routes=[Route("/webhooks/sandbox", receive, methods=["POST"])])
    async with serve_in_process(app) as running:
        yield running.http + "/webhooks/sandbox", queue


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with receiver() as (url, queue):
        app = create_app(SandboxServerConfig(webhook_secret=SECRET, webhook_url=url, seed=7))
        async with serve_in_process(app) as running, httpx.AsyncClient(timeout=5) as http:
            gateway = SandboxGateway(
                SandboxConfig(api_base=running.http, webhook_secret=SECRET), client=http
            )
            yield Rig(running.http, app.state.sandbox, gateway, http, queue)


async def test_the_page_offers_approve_decline_and_pending(rig: Rig) -> None:
    start = await rig.start("pay_page")
    assert start.state.status is PaymentStatus.INITIATED
    assert start.redirect_url == f"{rig.base}/pay/{start.ref}"
    page = await rig.http.get(start.redirect_url)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for action in ("approve", "decline", "pending"):
        assert f'action="{start.ref}/{action}"' in page.text
    assert (await rig.gateway.fetch_status(start.ref)).status is PaymentStatus.INITIATED


async def test_approving_on_the_page_completes_it_and_sends_a_signed_webhook(rig: Rig) -> None:
    start = await rig.start("pay_ok")
    clicked = await rig.click(start, "approve")
    assert clicked.status_code == 303
    assert (
        clicked.headers["location"] == f"http://shop.test/back?payment={start.ref}&status=succeeded"
    )
    event = await rig.webhook()
    assert event.trusted and event.ref == start.ref and event.event_type == "payment.succeeded"
    assert event.state is not None and event.state.status is PaymentStatus.COMPLETED
    assert event.state.amount == 1500 and event.state.currency == "INR"
    state = await rig.gateway.fetch_status(start.ref)
    assert state.status is PaymentStatus.COMPLETED
    assert state.gateway_transaction_id and state.gateway_transaction_id.startswith("sbx_txn_")


async def test_declining_fails_it_and_a_final_payment_stays_final(rig: Rig) -> None:
    start = await rig.start("pay_no")
    await rig.click(start, "decline")
    event = await rig.webhook()
    assert event.state is not None and event.state.status is PaymentStatus.FAILED
    await rig.click(start, "approve")  # too late: declined is final
    assert (await rig.gateway.fetch_status(start.ref)).status is PaymentStatus.FAILED
    sentinel = await rig.start("pay_sentinel")
    await rig.click(sentinel, "approve")
    assert (await rig.webhook()).ref == sentinel.ref  # no second webhook for pay_no came first


async def test_leaving_it_pending_says_so(rig: Rig) -> None:
    start = await rig.start("pay_wait")
    await rig.click(start, "pending")
    event = await rig.webhook()
    assert event.state is not None and event.state.status is PaymentStatus.PENDING
    assert (await rig.gateway.fetch_status(start.ref)).status is PaymentStatus.PENDING


async def test_the_same_reference_is_the_same_payment(rig: Rig) -> None:
    first, again = await rig.start("pay_same"), await rig.start("pay_same")
    assert first.ref == again.ref
    with pytest.raises(GatewayRejected):
        await rig.start("pay_same", amount=999)


async def test_refunds_are_idempotent_bounded_and_announced(rig: Rig) -> None:
    start = await rig.start("pay_refund", amount=1000)
    await rig.click(start, "approve")
    await rig.webhook()
    request = RefundRequest(reference="re_1", payment_ref=start.ref, amount=600, currency="INR")
    refund = await rig.gateway.refund(request)
    assert refund.status is RefundStatus.SUCCEEDED and refund.reference == "re_1"
    assert (await rig.gateway.refund(request)).refund_ref == refund.refund_ref
    event = await rig.webhook()
    assert event.refund is not None and event.refund.refund_ref == refund.refund_ref
    assert event.ref == start.ref and event.state is None
    with pytest.raises(GatewayRejected):
        await rig.gateway.refund(
            RefundRequest(reference="re_2", payment_ref=start.ref, amount=401, currency="INR")
        )
    assert (await rig.gateway.fetch_refund("re_1")).status is RefundStatus.SUCCEEDED
    unpaid = await rig.start("pay_unpaid")
    with pytest.raises(GatewayRejected):
        await rig.gateway.refund(
            RefundRequest(reference="re_3", payment_ref=unpaid.ref, amount=1, currency="INR")
        )


async def test_a_webhook_signed_with_another_secret_or_tampered_is_refused(rig: Rig) -> None:
    start = await rig.start("pay_sig")
    await rig.click(start, "approve")
    async with asyncio.timeout(5):
        headers, raw = await rig.received.get()
    other = SandboxGateway(
        SandboxConfig(api_base=rig.base, webhook_secret="other"), client=rig.http
    )
    with pytest.raises(InvalidSignature):
        other.verify_webhook(headers, raw)
    with pytest.raises(InvalidSignature):
        rig.gateway.verify_webhook(headers, raw.replace(b"succeeded", b"declined"))
    stale = SandboxGateway(
        SandboxConfig(api_base=rig.base, webhook_secret=SECRET),
        client=rig.http,
        clock=lambda: time.time() + 301,
    )
    with pytest.raises(InvalidSignature):
        stale.verify_webhook(headers, raw)
    assert rig.gateway.verify_webhook(headers, raw).ref == start.ref


# --- chaos knobs ----------------------------------------------------------------------------


async def test_drop_sends_nothing(rig: Rig) -> None:
    dropped = await rig.start("pay_dropped")
    await rig.chaos(drop=100)
    await rig.click(dropped, "approve")
    await rig.chaos(drop=0)
    sentinel = await rig.start("pay_after")
    await rig.click(sentinel, "approve")
    assert (await rig.webhook()).ref == sentinel.ref
    assert rig.received.empty()
    assert (await rig.stats())["counters"]["webhooks_dropped"] == 1
    # The status API still knows the truth: that is what the reconciler is for.
    assert (await rig.gateway.fetch_status(dropped.ref)).status is PaymentStatus.COMPLETED


async def test_duplicate_sends_the_same_event_twice(rig: Rig) -> None:
    await rig.chaos(duplicate=100)
    start = await rig.start("pay_twice")
    await rig.click(start, "approve")
    first, second = await rig.webhook(), await rig.webhook()
    assert first.event_id == second.event_id and first.ref == second.ref == start.ref


async def test_delay_holds_a_webhook_back(rig: Rig) -> None:
    await rig.chaos(delay=100, delay_seconds=1)
    start = await rig.start("pay_late")
    began = time.monotonic()
    await rig.click(start, "approve")
    assert (await rig.webhook()).ref == start.ref
    assert time.monotonic() - began >= 1.0


async def test_reorder_lets_a_later_webhook_overtake(rig: Rig) -> None:
    first, second = await rig.start("pay_first"), await rig.start("pay_second")
    await rig.chaos(reorder=100, reorder_seconds=1)
    await rig.click(first, "approve")
    await rig.chaos(reorder=0)
    await rig.click(second, "approve")
    assert [(await rig.webhook()).ref, (await rig.webhook()).ref] == [second.ref, first.ref]


async def test_status_429_says_when_to_retry(rig: Rig) -> None:
    start = await rig.start("pay_429")
    await rig.chaos(status_429=100, retry_after=3)
    with pytest.raises(GatewayUnavailable) as caught:
        await rig.gateway.fetch_status(start.ref)
    assert caught.value.retry_after == 3.0
    await rig.chaos(status_429=0)
    assert (await rig.gateway.fetch_status(start.ref)).status is PaymentStatus.INITIATED
    counters = (await rig.stats())["counters"]
    assert (counters["status_calls"], counters["status_429"]) == (2, 1)


async def test_status_5xx_is_unavailable(rig: Rig) -> None:
    start = await rig.start("pay_5xx")
    await rig.chaos(status_5xx=100)
    with pytest.raises(GatewayUnavailable):
        await rig.gateway.fetch_status(start.ref)


async def test_status_hang_times_the_caller_out(rig: Rig) -> None:
    start = await rig.start("pay_hang")
    await rig.chaos(status_hang=100, hang_seconds=3)
    async with httpx.AsyncClient(timeout=0.3) as impatient:
        gateway = SandboxGateway(
            SandboxConfig(api_base=rig.base, webhook_secret=SECRET), client=impatient
        )
        began = time.monotonic()
        with pytest.raises(GatewayUnavailable, match="timed out"):
            await gateway.fetch_status(start.ref)
        assert time.monotonic() - began < 2
    await rig.chaos(status_hang=0)


async def test_approve_delay_is_a_late_authorisation(rig: Rig) -> None:
    await rig.chaos(approve_delay=1)
    start = await rig.start("pay_slow_bank")
    await rig.click(start, "approve")
    pending = await rig.webhook()
    assert pending.state is not None and pending.state.status is PaymentStatus.PENDING
    assert (await rig.gateway.fetch_status(start.ref)).status is PaymentStatus.PENDING
    done = await rig.webhook(timeout=5)
    assert done.state is not None and done.state.status is PaymentStatus.COMPLETED
    assert (await rig.gateway.fetch_status(start.ref)).status is PaymentStatus.COMPLETED


async def test_expire_after_is_the_gateways_own_timeout(rig: Rig) -> None:
    await rig.chaos(expire_after=0.5)
    abandoned, paid = await rig.start("pay_abandoned"), await rig.start("pay_in_time")
    await rig.click(paid, "approve")
    assert (await rig.webhook()).ref == paid.ref
    expired = await rig.webhook()
    assert expired.ref == abandoned.ref and expired.event_type == "payment.expired"
    assert expired.state is not None and expired.state.status is PaymentStatus.EXPIRED
    await rig.click(abandoned, "approve")  # too late
    assert (await rig.gateway.fetch_status(abandoned.ref)).status is PaymentStatus.EXPIRED
    assert (await rig.gateway.fetch_status(paid.ref)).status is PaymentStatus.COMPLETED


async def test_a_late_authorisation_under_way_outlives_the_timeout(rig: Rig) -> None:
    await rig.chaos(expire_after=0.3, approve_delay=0.8)
    start = await rig.start("pay_slow_but_sure")
    await rig.click(start, "approve")
    assert (await rig.webhook()).event_type == "payment.processing"
    done = await rig.webhook()
    assert done.state is not None and done.state.status is PaymentStatus.COMPLETED


@pytest.mark.parametrize("knobs", [{"drop": 150}, {"nope": 1}, {"delay": "x"}])
async def test_bad_knobs_get_a_422_and_change_nothing(rig: Rig, knobs: dict[str, object]) -> None:
    response = await rig.http.put(rig.base + "/control/chaos", json=knobs)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert (await rig.http.get(rig.base + "/control/chaos")).json()["drop"] == 0


@pytest.mark.parametrize(
    ("method", "path", "payload", "status"),
    [
        ("POST", "/api/payments", {"amount": 1}, 422),
        ("POST", "/api/payments", {"reference": "r", "amount": -5, "currency": "INR"}, 422),
        ("GET", "/api/payments/sbx_pay_nope", None, 404),
        ("POST", "/control/payments/sbx_pay_nope/approve", None, 404),
    ],
)
async def test_bad_requests_get_json_errors(
    rig: Rig, method: str, path: str, payload: object, status: int
) -> None:
    response = await rig.http.request(method, rig.base + path, json=payload)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"code", "message"}


async def test_it_mounts_under_sandbox_in_another_app() -> None:
    async with receiver() as (url, queue):
        sandbox = SandboxServer(SandboxServerConfig(webhook_secret=SECRET, webhook_url=url))

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with sandbox:  # a mounted app's lifespan is not run by Starlette
                yield

        host = Starlette(routes=[Mount("/sandbox", app=sandbox.app)], lifespan=lifespan)
        async with serve_in_process(host) as running, httpx.AsyncClient(timeout=5) as http:
            rig = Rig(
                running.http + "/sandbox",
                sandbox,
                SandboxGateway(
                    SandboxConfig(api_base=running.http + "/sandbox", webhook_secret=SECRET),
                    client=http,
                ),
                http,
                queue,
            )
            start = await rig.start("pay_mounted")
            assert start.redirect_url == f"{running.http}/sandbox/pay/{start.ref}"
            assert (await rig.click(start, "approve")).status_code == 303
            assert (await rig.webhook()).state is not None


async def test_the_adapter_can_reach_it_in_process_without_a_socket() -> None:
    # The embedded default may talk to a mounted sandbox through httpx's ASGI transport;
    # public_url then names where browsers reach the page.
    async with receiver() as (url, queue):
        config = SandboxServerConfig(
            webhook_secret=SECRET, webhook_url=url, public_url="http://127.0.0.1:8000/sandbox"
        )
        async with SandboxServer(config) as sandbox:
            transport = httpx.ASGITransport(app=sandbox.app)
            async with httpx.AsyncClient(transport=transport) as http:
                gateway = SandboxGateway(
                    SandboxConfig(api_base="http://sandbox", webhook_secret=SECRET), client=http
                )
                rig = Rig("http://sandbox", sandbox, gateway, http, queue)
                start = await rig.start("pay_asgi")
                assert start.redirect_url == f"http://127.0.0.1:8000/sandbox/pay/{start.ref}"
                await http.post(f"http://sandbox/control/payments/{start.ref}/approve")
                assert (await rig.webhook()).ref == start.ref


def test_a_bad_variable_stops_the_process_naming_it() -> None:
    env = {**os.environ, "SANDBOX_WEBHOOK_SECRET": SECRET, "SANDBOX_REORDER": "lots"}
    done = subprocess.run(
        [sys.executable, "-m", "gateways.sandbox_server"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert b"SANDBOX_REORDER" in done.stderr


async def test_it_runs_as_its_own_process() -> None:
    async with receiver() as (url, queue):
        port = free_port()
        env = {
            **os.environ,
            "SANDBOX_PORT": str(port),
            "SANDBOX_WEBHOOK_SECRET": SECRET,
            "SANDBOX_WEBHOOK_URL": url,
            "SANDBOX_DUPLICATE": "100",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "gateways.sandbox_server"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                async with asyncio.timeout(20):
                    while True:
                        assert process.poll() is None, "sandbox exited"
                        with contextlib.suppress(httpx.TransportError):
                            if (await http.get(base + "/control/chaos")).status_code == 200:
                                break
                        await asyncio.sleep(0.1)
                gateway = SandboxGateway(
                    SandboxConfig(api_base=base, webhook_secret=SECRET), client=http
                )
                rig = Rig(base, None, gateway, http, queue)  # type: ignore[arg-type]
                start = await rig.start("pay_process")
                await rig.click(start, "approve")
                first, second = await rig.webhook(), await rig.webhook()  # SANDBOX_DUPLICATE=100
                assert first.event_id == second.event_id
        finally:
            stop_process(process)


async def test_the_control_api_drives_payments_lists_them_and_resets(rig: Rig) -> None:
    cancelled, expired = await rig.start("pay_cancel"), await rig.start("pay_expire")
    await rig.http.post(f"{rig.base}/control/payments/{cancelled.ref}/cancel")
    assert (await rig.webhook()).state.status is PaymentStatus.CANCELLED  # type: ignore[union-attr]
    await rig.http.post(f"{rig.base}/control/payments/{expired.ref}/expire")
    assert (await rig.webhook()).state.status is PaymentStatus.EXPIRED  # type: ignore[union-attr]
    listed = (await rig.http.get(rig.base + "/control/payments")).json()["payments"]
    assert {p["id"]: p["status"] for p in listed} == {
        cancelled.ref: "canceled",
        expired.ref: "expired",
    }
    await rig.chaos(drop=40)
    assert (await rig.http.post(rig.base + "/control/reset")).json() == {"reset": True}
    assert (await rig.http.get(rig.base + "/control/payments")).json() == {"payments": []}
    assert (await rig.http.get(rig.base + "/control/chaos")).json()["drop"] == 0
    assert (await rig.stats())["counters"] == {}


async def test_an_api_key_guards_the_api_and_control_but_not_the_customers_page() -> None:
    async with receiver() as (url, _queue):
        config = SandboxServerConfig(webhook_secret=SECRET, webhook_url=url, api_key="sbx_key")
        async with serve_in_process(create_app(config)) as running, httpx.AsyncClient() as http:
            base = running.http

            def gateway(key: str | None) -> SandboxGateway:
                return SandboxGateway(
                    SandboxConfig(api_base=base, webhook_secret=SECRET, api_key=key), client=http
                )

            request = PaymentRequest(reference="pay_key", amount=100, currency="INR")
            with pytest.raises(GatewayRejected) as caught:
                await gateway(None).start_payment(request)
            assert caught.value.status_code == 401
            with pytest.raises(GatewayRejected):
                await gateway("wrong").start_payment(request)
            start = await gateway("sbx_key").start_payment(request)
            assert (await http.get(base + "/control/chaos")).status_code == 401
            assert start.redirect_url is not None
            assert (await http.get(start.redirect_url)).status_code == 200


async def test_a_webhook_the_receiver_fails_is_sent_again() -> None:
    answers = [500, 502, 200]
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def flaky(request: Request) -> Response:
        got.put_nowait(await request.body())
        return Response(status_code=answers.pop(0))

    hooks = Starlette(routes=[Route("/webhooks/sandbox", flaky, methods=["POST"])])
    async with serve_in_process(hooks) as hook:
        config = SandboxServerConfig(
            webhook_secret=SECRET, webhook_url=hook.http + "/webhooks/sandbox"
        )
        app = create_app(config)
        async with serve_in_process(app) as running, httpx.AsyncClient(timeout=5) as http:
            gateway = SandboxGateway(
                SandboxConfig(api_base=running.http, webhook_secret=SECRET), client=http
            )
            start = await gateway.start_payment(
                PaymentRequest(reference="pay_flaky", amount=100, currency="INR")
            )
            await http.post(f"{running.http}/control/payments/{start.ref}/approve")
            async with asyncio.timeout(10):
                bodies = [await got.get() for _ in range(3)]
            assert len(set(bodies)) == 1  # the same event each time
            server: SandboxServer = app.state.sandbox
            async with asyncio.timeout(5):
                while server.stats["webhooks_sent"] != 1:
                    await asyncio.sleep(0.02)
            assert server.stats["webhooks_failed"] == 0


async def test_a_payments_own_callback_url_wins(rig: Rig) -> None:
    async with receiver() as (url, own):
        start = await rig.gateway.start_payment(
            PaymentRequest(reference="pay_own_hook", amount=100, currency="INR", callback_url=url)
        )
        await rig.click(start, "approve")
        async with asyncio.timeout(5):
            headers, raw = await own.get()
        assert rig.gateway.verify_webhook(headers, raw).ref == start.ref
        assert rig.received.empty()
