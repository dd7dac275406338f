"""WebSocket protocol errors close with their documented codes; ping answers with the head."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import Service, StartService
from tests.support.clients import auth, expect_close, order_body, recv_events, recv_json, token

ALICE = token("alice")
POS1 = token("pos-1", role="pos", store_id="store-1")


async def create(service: Service, tok: str = ALICE, **overrides: Any) -> str:
    """Create an order; its id."""
    r = await service.http.post("/api/orders", json=order_body(**overrides), headers=auth(tok))
    assert r.status_code == 201, r.text
    order_id: str = r.json()["order"]["id"]
    return order_id


@pytest.mark.parametrize(
    "frame",
    [
        "{",
        "not json",
        "",
        "[]",
        '["ping"]',
        '"ping"',
        "42",
        "null",
        '{"type": "pong"}',
        '{"type": "subscribe", "stream": "customer:bob"}',
        '{"type": "PING"}',
        '{"type": null}',
        "{}",
        '{"type": "auth"}',
        '{"type": "auth", "token": ""}',
        '{"type": "auth", "token": 5}',
    ],
)
async def test_a_bad_frame_closes_with_4400(service: Service, frame: str) -> None:
    async with connect(service.ws_url, additional_headers=auth(ALICE)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(frame)
        assert await expect_close(ws) == 4400


async def test_a_bad_binary_frame_closes_with_4400(service: Service) -> None:
    async with connect(service.ws_url, additional_headers=auth(ALICE)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(b"\xff\x00\x01")
        assert await expect_close(ws) == 4400


async def test_a_malformed_first_auth_message_closes_with_4400(service: Service) -> None:
    async with connect(service.ws_url) as ws:
        await ws.send("{not json")
        assert await expect_close(ws) == 4400


async def test_a_frame_over_the_size_limit_closes_with_1009(start_service: StartService) -> None:
    service = await start_service(ws_max_message_bytes=10_000)
    async with connect(service.ws_url, additional_headers=auth(ALICE)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send('{"type": "ping", "pad": "' + "x" * 20_000 + '"}')
        assert await expect_close(ws) == 1009


async def test_a_frame_just_under_the_size_limit_is_fine(start_service: StartService) -> None:
    service = await start_service(ws_max_message_bytes=10_000)
    async with connect(service.ws_url, additional_headers=auth(ALICE)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send('{"type": "ping", "pad": "' + "x" * 9_000 + '"}')
        assert (await recv_json(ws))["type"] == "pong"


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "1e3", "0x10", "%20", "1%00"])
async def test_a_bad_since_closes_with_4400(service: Service, since: str) -> None:
    await create(service)
    async with connect(f"{service.ws_url}?since={since}", additional_headers=auth(ALICE)) as ws:
        assert await expect_close(ws) == 4400


async def test_a_bad_since_with_a_query_token_closes_with_4400(service: Service) -> None:
    async with connect(f"{service.ws_url}?token={ALICE}&since=abc") as ws:
        assert await expect_close(ws) == 4400


async def test_a_third_socket_for_the_same_user_closes_with_4429(
    start_service: StartService,
) -> None:
    service = await start_service(ws_max_connections_per_user=2)
    headers = auth(ALICE)
    async with connect(service.ws_url, additional_headers=headers) as first:
        assert (await recv_json(first))["type"] == "hello"
        async with connect(service.ws_url, additional_headers=headers) as second:
            assert (await recv_json(second))["type"] == "hello"
            async with connect(service.ws_url, additional_headers=headers) as third:
                assert await expect_close(third) == 4429
            # Another user is not affected by Alice's cap.
            async with connect(service.ws_url, additional_headers=auth(token("bob"))) as bob:
                assert (await recv_json(bob))["type"] == "hello"
            # The first two stay open and live.
            await create(service)
            assert [e["seq"] for e in await recv_events(first, 1)] == [1]
            assert [e["seq"] for e in await recv_events(second, 1)] == [1]
        # A closed socket frees its slot.
        async with connect(service.ws_url, additional_headers=headers) as again:
            assert (await recv_json(again))["type"] == "hello"


async def test_the_connection_cap_counts_a_fresh_token_for_the_same_user(
    start_service: StartService,
) -> None:
    service = await start_service(ws_max_connections_per_user=1)
    async with connect(service.ws_url, additional_headers=auth(ALICE)) as first:
        assert (await recv_json(first))["type"] == "hello"
        async with connect(
            service.ws_url, additional_headers=auth(token("alice", ttl=600))
        ) as second:
            assert await expect_close(second) == 4429


async def test_ping_answers_pong_with_the_stream_head(service: Service) -> None:
    async with connect(service.ws_url, additional_headers=auth(ALICE)) as ws:
        assert (await recv_json(ws))["head_seq"] == 0
        await ws.send('{"type": "ping"}')
        assert await recv_json(ws) == {"type": "pong", "head_seq": 0}
        order_id = await create(service)
        r = await service.http.post(
            f"/api/pos/orders/{order_id}/status", json={"status": "PREPARING"}, headers=auth(POS1)
        )
        assert r.status_code == 200, r.text
        assert [e["seq"] for e in await recv_events(ws, 2)] == [1, 2]
        await ws.send('{"type": "ping"}')
        assert await recv_json(ws) == {"type": "pong", "head_seq": 2}


async def test_ping_on_a_store_stream_answers_with_the_store_head(service: Service) -> None:
    await create(service)
    await create(service, token("bob"))
    await create(service, store_id="store-2")
    async with connect(service.ws_url, additional_headers=auth(POS1)) as ws:
        hello = await recv_json(ws)
        assert hello["stream"] == "store:store-1" and hello["head_seq"] == 2
        await ws.send('{"type": "ping", "extra": true}')
        assert await recv_json(ws) == {"type": "pong", "head_seq": 2}


async def test_a_pong_reveals_events_missed_on_a_quiet_stream(service: Service) -> None:
    await create(service)
    async with connect(f"{service.ws_url}?since=1", additional_headers=auth(ALICE)) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["head_seq"] == 1
        await ws.send('{"type": "ping"}')
        assert await recv_json(ws) == {"type": "pong", "head_seq": 1}
