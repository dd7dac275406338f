from __future__ import annotations

from websockets.asyncio.client import connect

from tests.conftest import Service
from tests.support.clients import auth, order_body, recv_events, recv_json, token


async def test_an_order_moves_and_the_customer_sees_every_step_live(service: Service) -> None:
    alice = token("alice")
    pos = token("pos-1", role="pos", store_id="store-1")
    async with connect(service.ws_url, additional_headers=auth(alice)) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["head_seq"] == 0 and hello["orders"] == []
        created = await service.http.post("/api/orders", json=order_body(), headers=auth(alice))
        assert created.status_code == 201, created.text
        order_id = created.json()["order"]["id"]
        for status in ["PREPARING", "READY", "DELIVERED"]:
            r = await service.http.post(
                f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(pos)
            )
            assert r.status_code == 200, r.text
        events = await recv_events(ws, 4)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["status"] for e in events] == ["CONFIRMED", "PREPARING", "READY", "DELIVERED"]
