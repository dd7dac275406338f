"""A snapshot cut at SNAPSHOT_MAX_ORDERS says so, and the rest pages over REST from its cursor."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import Service, StartService
from tests.support.clients import auth, order_body, recv_json, token

POS = token("pos-s", role="pos", store_id="store-s")


async def place(service: Service, customer: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        r = await service.http.post(
            "/api/orders", json=order_body("store-s"), headers=auth(token(customer))
        )
        assert r.status_code == 201, r.text
        ids.append(str(r.json()["order"]["id"]))
    return ids[::-1]  # newest first, as snapshots and lists are


async def rest_pages(service: Service, tok: str, cursor: str) -> list[str]:
    """Every order id listed by GET /api/orders from ``cursor`` on."""
    ids: list[str] = []
    next_cursor: str | None = cursor
    while next_cursor:
        r = await service.http.get(
            "/api/orders", params={"cursor": next_cursor, "limit": 2}, headers=auth(tok)
        )
        assert r.status_code == 200, r.text
        body = r.json()
        ids.extend(o["id"] for o in body["orders"])
        next_cursor = body["next_cursor"]
    return ids


@pytest.mark.parametrize("tok", [token("sam"), POS], ids=["customer", "pos"])
async def test_a_cut_hello_says_truncated_and_its_cursor_pages_the_rest(
    start_service: StartService, tok: str
) -> None:
    service = await start_service(snapshot_max_orders=3)
    newest_first = await place(service, "sam", 5)
    async with connect(f"{service.ws_url}?token={tok}") as ws:
        hello = await recv_json(ws)
    assert [o["id"] for o in hello["orders"]] == newest_first[:3]
    assert hello["truncated"] is True
    assert await rest_pages(service, tok, hello["next_cursor"]) == newest_first[3:]


async def test_a_snapshot_within_its_bound_has_no_truncated_flag(
    start_service: StartService,
) -> None:
    service = await start_service(snapshot_max_orders=3)
    newest_first = await place(service, "tia", 3)
    async with connect(f"{service.ws_url}?token={token('tia')}") as ws:
        hello = await recv_json(ws)
    assert [o["id"] for o in hello["orders"]] == newest_first
    assert "truncated" not in hello and "next_cursor" not in hello


async def test_a_cut_reset_and_a_rest_snapshot_say_truncated_too(
    start_service: StartService,
) -> None:
    service = await start_service(snapshot_max_orders=2)
    newest_first = await place(service, "uma", 3)
    async with connect(f"{service.ws_url}?token={token('uma')}&since=99") as ws:
        reset = await recv_json(ws)
    headers = auth(token("uma"))
    answers: list[dict[str, Any]] = [
        reset,
        (await service.http.get("/api/events", params={"since": 99}, headers=headers)).json(),
        (
            await service.http.get("/api/events", params={"snapshot": "true"}, headers=headers)
        ).json(),
    ]
    for answer in answers:
        assert [o["id"] for o in answer["orders"]] == newest_first[:2]
        assert answer["truncated"] is True and answer["head_seq"] == 3
        assert await rest_pages(service, token("uma"), answer["next_cursor"]) == newest_first[2:]
    assert answers[2]["snapshot"] is True and answers[2]["events"] == []
    assert answers[2]["head_event_id"] == answers[0]["head_event_id"] is not None


@pytest.mark.parametrize("value", ["yes", "1", "TRUE"])
async def test_a_bad_snapshot_flag_is_400(service: Service, value: str) -> None:
    r = await service.http.get(
        "/api/events", params={"snapshot": value}, headers=auth(token("vic"))
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query"
