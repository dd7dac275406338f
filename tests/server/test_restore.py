"""A log restored to an earlier point reuses seqs under the same epoch: resuming clients reset."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, update
from websockets.asyncio.client import connect

from orders.models import Stream, StreamEvent
from tests.conftest import Service
from tests.support.clients import auth, expect_close, order_body, recv_events, recv_json, token

POS = token("pos-r", role="pos", store_id="store-1")
STREAM = "customer:rho"


async def move(service: Service, order_id: str, status: str) -> dict[str, Any]:
    r = await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(POS)
    )
    assert r.status_code == 200, r.text
    event: dict[str, Any] = r.json()["event"]
    return event


async def restored_log(
    service: Service,
) -> tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Write seqs 1..3, restore the stream to seq 1, write two events that reuse seqs 2 and 3.

    Returns the order id, the epoch, the events a client saw before the restore (seqs 1..3)
    and the new events at seqs 2 and 3.
    """
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token("rho")))
    assert r.status_code == 201, r.text
    order_id = str(r.json()["order"]["id"])
    async with connect(f"{service.ws_url}?token={token('rho')}&since=0") as ws:
        hello = await recv_json(ws)
        await move(service, order_id, "PREPARING")
        await move(service, order_id, "READY")
        seen = await recv_events(ws, 3)
    assert [e["seq"] for e in seen] == [1, 2, 3]
    # The restore: the stream's head and index go back to seq 1, the epoch stays.
    async with service.db.transaction() as session:
        await session.execute(
            delete(StreamEvent).where(StreamEvent.stream == STREAM, StreamEvent.seq > 1)
        )
        await session.execute(update(Stream).where(Stream.name == STREAM).values(head_seq=1))
    new = [
        await move(service, order_id, "OUT_FOR_DELIVERY"),
        await move(service, order_id, "DELIVERED"),
    ]
    return order_id, hello["epoch"], seen, new


async def test_a_websocket_resume_from_a_reused_seq_is_reset(service: Service) -> None:
    _, epoch, seen, new = await restored_log(service)
    seen_at_3 = seen[-1]["event_id"]
    base = f"{service.ws_url}?token={token('rho')}&epoch={epoch}"
    async with connect(f"{base}&since=3&last_event_id={seen_at_3}") as ws:
        reset = await recv_json(ws)
    assert reset["type"] == "reset" and reset["head_seq"] == 3
    assert reset["head_event_id"] == new[-1]["event_id"]
    # A client whose last event is still the log's resumes as before.
    async with connect(f"{base}&since=3&last_event_id={new[-1]['event_id']}") as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["head_seq"] == 3
    async with connect(f"{base}&since=1&last_event_id={seen[0]['event_id']}") as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello"
        replay = await recv_events(ws, 2)
    assert [e["event_id"] for e in replay] == [e["event_id"] for e in new]


async def test_a_rest_resume_from_a_reused_seq_is_reset(service: Service) -> None:
    _, epoch, seen, new = await restored_log(service)
    seen_at_3 = seen[-1]["event_id"]
    headers = auth(token("rho"))
    params = {"since": 3, "epoch": epoch, "last_event_id": seen_at_3}
    body = (await service.http.get("/api/events", params=params, headers=headers)).json()
    assert body["reset"] is True and body["head_seq"] == 3
    assert body["head_event_id"] == new[-1]["event_id"]
    params["last_event_id"] = new[-1]["event_id"]
    body = (await service.http.get("/api/events", params=params, headers=headers)).json()
    assert "reset" not in body and body["events"] == []


@pytest.mark.parametrize("value", ["x", "0", "-3", "1.5"])
async def test_a_bad_last_event_id_is_4400_or_400(service: Service, value: str) -> None:
    async with connect(
        f"{service.ws_url}?token={token('rho')}&since=0&last_event_id={value}"
    ) as ws:
        assert await expect_close(ws) == 4400
    r = await service.http.get(
        "/api/events", params={"last_event_id": value}, headers=auth(token("rho"))
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query"


async def test_a_websocket_resume_from_a_reused_first_seq_is_reset(service: Service) -> None:
    # Seq 1 is a position like any other: restored back to seq 0, the stream's next event
    # reuses it, and a client whose last event was the old seq 1 must be reset.
    stream, customer = "customer:rho1", "rho1"
    base = f"{service.ws_url}?token={token(customer)}"
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token(customer)))
    assert r.status_code == 201, r.text
    async with connect(f"{base}&since=0") as ws:
        epoch = (await recv_json(ws))["epoch"]
        (old,) = await recv_events(ws, 1)
    async with service.db.transaction() as session:
        await session.execute(delete(StreamEvent).where(StreamEvent.stream == stream))
        await session.execute(update(Stream).where(Stream.name == stream).values(head_seq=0))
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token(customer)))
    assert r.status_code == 201, r.text
    base += f"&epoch={epoch}&since=1"
    async with connect(f"{base}&last_event_id={old['event_id']}") as ws:
        reset = await recv_json(ws)
    assert (reset["type"], reset["stream"], reset["head_seq"]) == ("reset", stream, 1)
    assert reset["head_event_id"] != old["event_id"]
    async with connect(f"{base}&last_event_id={reset['head_event_id']}") as ws:
        hello = await recv_json(ws)
    assert hello["type"] == "hello" and hello["head_seq"] == 1
