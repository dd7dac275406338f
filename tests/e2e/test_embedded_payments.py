"""`python -m server` on the embedded default: the sandbox in-process, its webhooks back over
HTTP to the same process, the reconciler in-process — a payment confirms the order live."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from tests.support.clients import SECRET, auth, order_body, recv_events, recv_json, token
from tests.support.servers import serve_subprocess


async def test_the_embedded_default_pays_in_its_own_sandbox_and_the_order_confirms_live(
    tmp_path: Path,
) -> None:
    env = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/embedded.db",
        "JWT_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
    }
    customer = token("emb")
    async with (
        serve_subprocess(env) as web,
        httpx.AsyncClient(base_url=web.http, timeout=10) as http,
    ):
        async with connect(f"{web.ws}/ws?token={customer}") as ws:
            assert (await recv_json(ws))["type"] == "hello"
            r = await http.post(
                "/api/orders", json=order_body(method="online"), headers=auth(customer)
            )
            order_id = r.json()["order"]["id"]
            r = await http.post(
                f"/api/orders/{order_id}/payments",
                json={"gateway": "sandbox"},
                headers=auth(customer),
            )
            assert r.status_code == 201, r.text
            redirect = r.json()["redirect_url"]
            assert redirect.startswith(f"{web.http}/sandbox/pay/"), redirect
            page = await http.get(redirect)
            assert page.status_code == 200 and "Approve" in page.text
            sandbox_id = re.search(r"/pay/([^/?]+)", redirect)
            assert sandbox_id is not None
            # The customer presses Approve on the sandbox's page.
            r = await http.post(f"/sandbox/pay/{sandbox_id.group(1)}/approve")
            assert r.status_code == 200, r.text
            events = await recv_events(ws, 5, timeout=15)
            assert [(e["kind"], e["status"]) for e in events] == [
                ("order.status", "PENDING_PAYMENT"),
                ("payment.status", "INITIATED"),
                ("payment.status", "COMPLETED"),
                ("order.status", "CONFIRMED"),
                ("receipt.issued", "ISSUED"),
            ]
            assert events[-2]["order"]["payment_status"] == "COMPLETED"
            assert events[-1]["receipt"]["kind"] == "sale"
        metrics = (await http.get("/metrics")).text
        assert 'webhooks_total{gateway="sandbox",outcome="apply"} 1.0' in metrics
