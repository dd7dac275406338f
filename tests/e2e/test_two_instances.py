"""Real `python -m server` processes sharing PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import signal

import httpx
from websockets.asyncio.client import connect

from tests.conftest import Backend
from tests.support.clients import auth, expect_close, order_body, recv_events, recv_json, token
from tests.support.servers import serve_subprocess

POS = token("pos-1", role="pos", store_id="store-1")


async def test_a_subscriber_on_one_instance_receives_in_order_what_is_written_through_another(
    pg_backend: Backend,
) -> None:
    customer = token("rita")
    async with serve_subprocess(pg_backend.env()) as a, serve_subprocess(pg_backend.env()) as b:
        async with (
            httpx.AsyncClient(timeout=10) as http,
            connect(f"{a.ws}/ws?token={customer}") as on_a,
            connect(f"{b.ws}/ws", additional_headers=auth(POS)) as store_on_b,
        ):
            assert (await recv_json(on_a))["type"] == "hello"
            assert (await recv_json(store_on_b))["type"] == "hello"
            created = await http.post(
                f"{b.http}/api/orders", json=order_body(), headers=auth(customer)
            )
            assert created.status_code == 201, created.text
            order_id = created.json()["order"]["id"]
            for status in ["PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"]:
                # Alternate the instance that takes the write.
                base = a.http if status in ("READY", "DELIVERED") else b.http
                r = await http.post(
                    f"{base}/api/pos/orders/{order_id}/status",
                    json={"status": status},
                    headers=auth(POS),
                )
                assert r.status_code == 200, r.text
            events = await recv_events(on_a, 5)
            store_events = await recv_events(store_on_b, 5)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert [e["status"] for e in events] == [
        "CONFIRMED",
        "PREPARING",
        "READY",
        "OUT_FOR_DELIVERY",
        "DELIVERED",
    ]
    assert [e["event_id"] for e in store_events] == [e["event_id"] for e in events]


async def test_a_killed_instance_loses_nothing_the_client_resumes_on_the_other(
    pg_backend: Backend,
) -> None:
    customer = token("sam")
    async with serve_subprocess(pg_backend.env()) as a, serve_subprocess(pg_backend.env()) as b:
        async with httpx.AsyncClient(timeout=10) as http:
            ws = await connect(f"{a.ws}/ws?token={customer}")
            hello = await recv_json(ws)
            created = await http.post(
                f"{b.http}/api/orders", json=order_body(), headers=auth(customer)
            )
            order_id = created.json()["order"]["id"]
            (first,) = await recv_events(ws, 1)
            assert a.process is not None
            a.process.send_signal(signal.SIGKILL)  # no graceful anything
            await expect_close(ws, timeout=10)
            for status in ["PREPARING", "READY"]:
                r = await http.post(
                    f"{b.http}/api/pos/orders/{order_id}/status",
                    json={"status": status},
                    headers=auth(POS),
                )
                assert r.status_code == 200
            async with connect(
                f"{b.ws}/ws?token={customer}&since={first['seq']}&epoch={hello['epoch']}"
            ) as resumed:
                assert (await recv_json(resumed))["type"] == "hello"
                events = await recv_events(resumed, 2)
    assert [e["seq"] for e in events] == [2, 3]


async def test_sigterm_closes_sockets_with_1012_and_exits_cleanly(pg_backend: Backend) -> None:
    async with serve_subprocess(pg_backend.env()) as a:
        ws = await connect(f"{a.ws}/ws?token={token('tess')}")
        await recv_json(ws)
        assert a.process is not None
        a.process.send_signal(signal.SIGTERM)
        assert await expect_close(ws, timeout=15) == 1012
        # uvicorn re-raises the signal after its graceful shutdown: "terminated by SIGTERM".
        assert await asyncio.to_thread(a.process.wait, 15) in (0, -signal.SIGTERM)
