"""Demo tokens: minted only when DEMO_TOKENS is on, and only for customers and terminals."""

from __future__ import annotations

import pytest

from tests.conftest import StartService
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body


async def test_a_minted_demo_token_works_on_the_api(start_service: StartService) -> None:
    service = await start_service(demo_tokens=True, jwt_secret=None)
    r = await service.http.post("/demo/token", json={"sub": "demo-alice"})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    created = await service.http.post("/api/orders", json=order_body(), headers=auth(token))
    assert created.status_code == 201
    assert created.json()["order"]["customer_id"] == "demo-alice"
    pos = await service.http.post(
        "/demo/token", json={"sub": "till", "role": "pos", "store_id": "store-1", "ttl": 60}
    )
    listed = await service.http.get("/api/pos/orders", headers=auth(pos.json()["token"]))
    assert [o["customer_id"] for o in listed.json()["orders"]] == ["demo-alice"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "sub"),
        ({"sub": ""}, "sub"),
        ({"sub": "x", "role": "admin"}, "role"),
        ({"sub": "x", "role": "pos"}, "store_id"),
        ({"sub": "x", "ttl": 10**9}, "ttl"),
        ({"sub": "x", "ttl": True}, "ttl"),
    ],
)
async def test_a_bad_demo_token_request_is_422_naming_the_field(
    start_service: StartService, body: dict[str, object], field: str
) -> None:
    service = await start_service(demo_tokens=True)
    error = assert_error(await service.http.post("/demo/token", json=body), 422, "validation_error")
    assert error["field"] == field


async def test_without_demo_tokens_there_is_no_way_to_mint_one(start_service: StartService) -> None:
    service = await start_service(demo_tokens=False)
    assert_error(await service.http.post("/demo/token", json={"sub": "x"}), 404, "not_found")
