"""Holes the log cannot fill end in ``reset``, never silence; pings are answered from memory."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import delete, text, update
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from orders.models import Stream, StreamEvent
from orders.workflow import OrderStatus
from tests.conftest import Backend, Service, StartService
from tests.support.clients import auth, expect_close, order_body, recv_events, recv_json, token
from tests.support.writes import write_without_publishing

POS = token("pos-g", role="pos", store_id="store-1")


async def place(service: Service, customer: str) -> str:
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token(customer)))
    assert r.status_code == 201, r.text
    return str(r.json()["order"]["id"])


async def move(service: Service, order_id: str, status: str) -> None:
    r = await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(POS)
    )
    assert r.status_code == 200, r.text


def ws_url(service: Service, customer: str, **params: object) -> str:
    query = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{service.ws_url}?token={token(customer)}{query}"


def unfillable(service: Service, cause: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "ws_unfillable_gaps_total", {"cause": cause, "outcome": "reset"}
    )
    return value or 0.0


async def recv_until_reset(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """Messages until a reset (events before it are of the old log); the reset."""
    async with asyncio.timeout(timeout):
        while True:
            message = await recv_json(ws, timeout)
            if message["type"] == "reset":
                return message


@pytest.mark.parametrize("cause", ["pruned", "hole"])
async def test_a_position_deleted_under_a_connected_client_ends_in_a_reset_not_silence(
    service: Service, cause: str
) -> None:
    order_id = await place(service, "gia")
    async with connect(ws_url(service, "gia", since=1)) as ws:
        await recv_json(ws)  # hello at 1
        # Seq 2 is committed but its publish is lost, and before anyone backfills it the
        # position is gone: pruned (pruned_seq raised) or deleted outright.
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
        async with service.db.transaction() as session:
            await session.execute(
                delete(StreamEvent).where(
                    StreamEvent.stream == "customer:gia", StreamEvent.seq == 2
                )
            )
            if cause == "pruned":
                await session.execute(
                    update(Stream).where(Stream.name == "customer:gia").values(pruned_seq=2)
                )
        await move(service, order_id, "READY")  # seq 3 reveals the jump; 2 cannot be read
        reset = await recv_json(ws)
        assert reset["type"] == "reset" and reset["head_seq"] == 3
        assert [(o["id"], o["status"]) for o in reset["orders"]] == [(order_id, "READY")]
        # And the socket is live again: the next event comes right after the new position.
        await move(service, order_id, "OUT_FOR_DELIVERY")
        (event,) = await recv_events(ws, 1)
        assert event["seq"] == 4 and event["status"] == "OUT_FOR_DELIVERY"
    assert unfillable(service, cause) == 1


async def test_a_log_recreated_under_a_connected_client_ends_in_a_reset_with_its_new_epoch(
    start_service: StartService,
) -> None:
    service = await start_service(hub_safety_poll_interval=0.3, hub_poll_interval=0.1)
    first = await place(service, "hana")
    await move(service, first, "PREPARING")
    async with connect(ws_url(service, "hana")) as ws:
        hello = await recv_json(ws)
        assert hello["head_seq"] == 2
        # The log is reset: the stream's positions and row are gone; new writes start a new
        # epoch at seq 1, which the old cursor would take for duplicates and drop.
        async with service.db.transaction() as session:
            await session.execute(delete(StreamEvent).where(StreamEvent.stream == "customer:hana"))
            await session.execute(delete(Stream).where(Stream.name == "customer:hana"))
        await place(service, "hana")
        reset = await recv_until_reset(ws)
        assert reset["epoch"] != hello["epoch"]
        sentinel = await place(service, "hana")
        async with asyncio.timeout(10):
            events: list[dict[str, Any]] = []
            while not events or events[-1]["order_id"] != sentinel:
                events.extend(await recv_events(ws, 1))
        assert [e["seq"] for e in events] == list(
            range(reset["head_seq"] + 1, reset["head_seq"] + 1 + len(events))
        )
    assert unfillable(service, "gone") + unfillable(service, "epoch") == 1


async def test_a_pong_carries_the_head_of_the_events_the_hub_has_seen(service: Service) -> None:
    async with (
        connect(ws_url(service, "ida")) as a,
        connect(ws_url(service, "ida", since=0)) as b,
    ):
        assert (await recv_json(a))["head_seq"] == 0
        assert (await recv_json(b))["head_seq"] == 0
        order_id = await place(service, "ida")
        await move(service, order_id, "PREPARING")
        for ws in (a, b):
            assert [e["seq"] for e in await recv_events(ws, 2)] == [1, 2]
            await ws.send('{"type": "ping"}')
            assert await recv_json(ws) == {"type": "pong", "head_seq": 2}


async def test_pings_are_answered_while_the_database_is_locked_and_a_hello_waits(
    backend: Backend, service: Service
) -> None:
    if backend.name != "postgres":
        pytest.skip("needs a lock that blocks readers (PostgreSQL's LOCK TABLE)")
    order_id = await place(service, "jax")
    await move(service, order_id, "PREPARING")
    sockets = [await connect(ws_url(service, "jax")) for _ in range(5)]
    try:
        for ws in sockets:
            await recv_json(ws)
        async with service.db.transaction() as session:
            # Every database read of the hub (heads, snapshots) now waits for this transaction.
            await session.execute(text("LOCK TABLE streams IN ACCESS EXCLUSIVE MODE"))
            late = asyncio.create_task(recv_first(ws_url(service, "jax")))
            for _ in range(3):
                for ws in sockets:
                    await ws.send('{"type": "ping"}')
            for ws in sockets:
                for _ in range(3):
                    assert await recv_json(ws) == {"type": "pong", "head_seq": 2}
            # The newcomer's hello needs the database: it is still waiting.
            assert not late.done()
        hello = await asyncio.wait_for(late, 10)
        assert hello["type"] == "hello" and hello["head_seq"] == 2
    finally:
        for ws in sockets:
            await ws.close()


async def recv_first(url: str) -> dict[str, Any]:
    async with connect(url) as ws:
        return await recv_json(ws, 10)


async def test_a_ping_flood_is_closed_with_4400_after_its_burst(service: Service) -> None:
    async with connect(ws_url(service, "kai")) as ws:
        await recv_json(ws)
        for _ in range(11):
            await ws.send('{"type": "ping"}')
        pongs = 0
        with pytest.raises(ConnectionClosed):
            while True:
                assert (await recv_json(ws))["type"] == "pong"
                pongs += 1
        assert pongs == 10
        assert ws.close_code == 4400
    assert service.metrics.registry.get_sample_value("ws_closes_total", {"code": "4400"}) == 1


async def test_a_token_accepted_through_the_leeway_is_not_closed_right_after_hello(
    start_service: StartService,
) -> None:
    service = await start_service(jwt_leeway=30)
    expired = token("lia", ttl=-5)  # expired 5 s ago, within the 30 s leeway
    async with connect(f"{service.ws_url}?token={expired}") as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send('{"type": "ping"}')
        assert await recv_json(ws) == {"type": "pong", "head_seq": 0}


async def test_a_token_past_its_leeway_is_closed_with_4401(start_service: StartService) -> None:
    service = await start_service(jwt_leeway=2)
    nearly = token("max", ttl=-1)  # accepted: one second of leeway left
    async with connect(f"{service.ws_url}?token={nearly}") as ws:
        assert (await recv_json(ws))["type"] == "hello"
        assert await expect_close(ws, timeout=5) == 4401
