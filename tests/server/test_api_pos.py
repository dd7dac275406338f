"""POS endpoints: move an order along the workflow (409 lists what is allowed); list the store."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Service
from tests.support.asserts import assert_error, counts
from tests.support.clients import auth, order_body, token

ALICE = token("alice")
POS1 = token("pos-1", role="pos", store_id="store-1")


async def create(
    service: Service, *, method: str = "cash", tok: str = ALICE, store: str = "store-1"
) -> str:
    """Create an order; its id."""
    r = await service.http.post(
        "/api/orders", json=order_body(store, method=method), headers=auth(tok)
    )
    assert r.status_code == 201, r.text
    order_id: str = r.json()["order"]["id"]
    return order_id


async def move(
    service: Service, order_id: str, status: str, *, tok: str = POS1, **extra: Any
) -> httpx.Response:
    """POST a status change."""
    return await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": status, **extra}, headers=auth(tok)
    )


async def current(service: Service, order_id: str) -> dict[str, Any]:
    """The order as its owner sees it now."""
    r = await service.http.get(f"/api/orders/{order_id}", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    order: dict[str, Any] = r.json()["order"]
    return order


# -- set status -------------------------------------------------------------------------------


async def test_the_store_moves_an_order_and_gets_the_order_and_its_event(service: Service) -> None:
    order_id = await create(service)
    r = await move(service, order_id, "PREPARING", note="two sugars")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"order", "event"}
    assert body["order"]["id"] == order_id
    assert body["order"]["status"] == "PREPARING"
    assert body["order"]["version"] == 2
    event = body["event"]
    assert event["order_id"] == order_id
    assert event["kind"] == "order.status"
    assert (event["previous_status"], event["status"]) == ("CONFIRMED", "PREPARING")
    assert event["source"] == "pos"
    assert event["actor"] == "pos:pos-1"
    assert event["note"] == "two sugars"
    assert await current(service, order_id) == body["order"]
    assert await counts(service) == (1, 2)


@pytest.mark.parametrize(
    "path",
    [
        ["PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"],
        ["PREPARING", "READY", "DELIVERED"],
        ["PREPARING", "READY", "CANCELLED"],
        ["CANCELLED"],
    ],
    ids=lambda p: ">".join(p),
)
async def test_the_store_walks_an_order_along_every_documented_path(
    service: Service, path: list[str]
) -> None:
    order_id = await create(service)
    for version, status in enumerate(path, start=2):
        r = await move(service, order_id, status)
        assert r.status_code == 200, r.text
        assert r.json()["order"]["status"] == status
        assert r.json()["order"]["version"] == version
    assert await counts(service) == (1, 1 + len(path))


async def test_the_store_confirms_an_unpaid_order(service: Service) -> None:
    order_id = await create(service, method="online")
    r = await move(service, order_id, "CONFIRMED")
    assert r.status_code == 200, r.text
    assert r.json()["event"]["previous_status"] == "PENDING_PAYMENT"


def assert_conflict(response: httpx.Response, status: str, allowed: list[str]) -> None:
    """A 409 invalid_transition naming the order's current ``status``, whose ``allowed`` is
    exactly ``allowed``, in order."""
    assert response.status_code == 409, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == "invalid_transition"
    assert isinstance(error["message"], str) and error["message"]
    assert error["status"] == status
    assert error["allowed"] == allowed


@pytest.mark.parametrize(
    ("setup", "target", "allowed"),
    [
        ([], "READY", ["PREPARING", "CANCELLED"]),
        ([], "DELIVERED", ["PREPARING", "CANCELLED"]),
        ([], "CONFIRMED", ["PREPARING", "CANCELLED"]),
        ([], "PENDING_PAYMENT", ["PREPARING", "CANCELLED"]),
        ([], "EXPIRED", ["PREPARING", "CANCELLED"]),
        (["PREPARING"], "CONFIRMED", ["READY", "CANCELLED"]),
        (["PREPARING"], "OUT_FOR_DELIVERY", ["READY", "CANCELLED"]),
        (["PREPARING", "READY"], "PREPARING", ["OUT_FOR_DELIVERY", "DELIVERED", "CANCELLED"]),
        (["PREPARING", "READY", "OUT_FOR_DELIVERY"], "READY", ["DELIVERED"]),
        (["PREPARING", "READY", "OUT_FOR_DELIVERY"], "CANCELLED", ["DELIVERED"]),
        (["PREPARING", "READY", "DELIVERED"], "CANCELLED", []),
        (["PREPARING", "READY", "DELIVERED"], "PREPARING", []),
        (["CANCELLED"], "CONFIRMED", []),
        (["CANCELLED"], "CANCELLED", []),
    ],
    ids=lambda v: ">".join(v) if isinstance(v, list) else v,
)
async def test_an_invalid_transition_is_409_listing_exactly_what_is_allowed_and_changes_nothing(
    service: Service, setup: list[str], target: str, allowed: list[str]
) -> None:
    order_id = await create(service)
    for status in setup:
        assert (await move(service, order_id, status)).status_code == 200
    before_order = await current(service, order_id)
    before_counts = await counts(service)
    status = setup[-1] if setup else "CONFIRMED"
    assert_conflict(await move(service, order_id, target), status, allowed)
    assert await current(service, order_id) == before_order
    assert await counts(service) == before_counts


@pytest.mark.parametrize(
    ("target", "allowed"),
    [("PREPARING", ["CONFIRMED", "CANCELLED"]), ("EXPIRED", ["CONFIRMED", "CANCELLED"])],
)
async def test_an_unpaid_order_cannot_be_prepared_or_expired_by_the_store(
    service: Service, target: str, allowed: list[str]
) -> None:
    order_id = await create(service, method="online")
    assert_conflict(await move(service, order_id, target), "PENDING_PAYMENT", allowed)
    assert (await current(service, order_id))["status"] == "PENDING_PAYMENT"
    assert await counts(service) == (1, 1)


#: name -> (raw body, status, code, field named or None).
BAD_BODIES: dict[str, tuple[bytes, int, str, str | None]] = {
    "malformed JSON": (b'{"status": ', 400, "invalid_json", None),
    "empty": (b"", 400, "invalid_json", None),
    "a JSON array": (b'["PREPARING"]', 400, "invalid_json", None),
    "a JSON string": (b'"PREPARING"', 400, "invalid_json", None),
    "missing status": (b'{"note": "hi"}', 422, "validation_error", "status"),
    "unknown status": (b'{"status": "SHIPPED"}', 422, "validation_error", "status"),
    "lowercase status": (b'{"status": "preparing"}', 422, "validation_error", "status"),
    "padded status": (b'{"status": " PREPARING"}', 422, "validation_error", "status"),
    "status a number": (b'{"status": 2}', 422, "validation_error", "status"),
    "status null": (b'{"status": null}', 422, "validation_error", "status"),
    "status a list": (b'{"status": ["PREPARING"]}', 422, "validation_error", "status"),
    "unknown field": (
        b'{"status": "PREPARING", "store_id": "store-2"}',
        422,
        "validation_error",
        "store_id",
    ),
    "note a number": (b'{"status": "PREPARING", "note": 5}', 422, "validation_error", "note"),
    "note too long": (
        orjson.dumps({"status": "PREPARING", "note": "x" * 501}),
        422,
        "validation_error",
        "note",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_a_bad_status_body_gets_a_clear_error_and_changes_nothing(
    service: Service, case: str
) -> None:
    raw, status, code, field = BAD_BODIES[case]
    order_id = await create(service)
    before = await current(service, order_id)
    r = await service.http.post(
        f"/api/pos/orders/{order_id}/status",
        content=raw,
        headers={**auth(POS1), "content-type": "application/json"},
    )
    error = assert_error(r, status, code)
    if field is not None:
        assert error["field"] == field
    assert await current(service, order_id) == before
    assert await counts(service) == (1, 1)


async def test_an_unknown_status_error_lists_the_statuses(service: Service) -> None:
    order_id = await create(service)
    error = assert_error(await move(service, order_id, "SHIPPED"), 422, "validation_error")
    for name in ["PREPARING", "READY", "DELIVERED", "CANCELLED"]:
        assert name in error["message"]


async def test_moving_an_unknown_order_is_404(service: Service) -> None:
    assert_error(await move(service, "ord_nope", "PREPARING"), 404, "not_found")
    assert await counts(service) == (0, 0)


async def test_a_note_of_exactly_500_characters_is_kept(service: Service) -> None:
    order_id = await create(service)
    r = await move(service, order_id, "PREPARING", note="n" * 500)
    assert r.status_code == 200, r.text
    assert r.json()["event"]["note"] == "n" * 500


# -- list -------------------------------------------------------------------------------------


async def test_the_store_lists_its_orders_newest_first(service: Service) -> None:
    first = await create(service)
    second = await create(service, tok=token("bob"))
    walk_in = await create(service, tok=POS1)
    await create(service, store="store-2")
    r = await service.http.get("/api/pos/orders", headers=auth(POS1))
    assert r.status_code == 200, r.text
    orders = r.json()["orders"]
    assert [o["id"] for o in orders] == [walk_in, second, first]
    assert {o["store_id"] for o in orders} == {"store-1"}


async def test_the_store_list_filters_by_status(service: Service) -> None:
    confirmed = await create(service)
    preparing = await create(service)
    unpaid = await create(service, method="online")
    assert (await move(service, preparing, "PREPARING")).status_code == 200
    for status, expected in [
        ("CONFIRMED", [confirmed]),
        ("PREPARING", [preparing]),
        ("PENDING_PAYMENT", [unpaid]),
        ("DELIVERED", []),
    ]:
        r = await service.http.get("/api/pos/orders", params={"status": status}, headers=auth(POS1))
        assert r.status_code == 200, r.text
        assert [o["id"] for o in r.json()["orders"]] == expected, status


async def test_the_store_list_honours_limit(service: Service) -> None:
    ids = [await create(service) for _ in range(3)]
    r = await service.http.get("/api/pos/orders", params={"limit": "2"}, headers=auth(POS1))
    assert [o["id"] for o in r.json()["orders"]] == ids[::-1][:2]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"status": "SHIPPED"}, 422, "validation_error"),
        ({"status": "confirmed"}, 422, "validation_error"),
        ({"limit": "0"}, 400, "invalid_query"),
        ({"limit": "501"}, 400, "invalid_query"),
        ({"limit": "lots"}, 400, "invalid_query"),
    ],
    ids=str,
)
async def test_a_bad_store_list_query_gets_a_clear_error(
    service: Service, params: dict[str, str], status: int, code: str
) -> None:
    await create(service)
    assert_error(
        await service.http.get("/api/pos/orders", params=params, headers=auth(POS1)), status, code
    )


async def test_pos_endpoints_need_a_token(service: Service) -> None:
    order_id = await create(service)
    assert_error(await service.http.get("/api/pos/orders"), 401, "unauthenticated")
    r = await service.http.post(f"/api/pos/orders/{order_id}/status", json={"status": "PREPARING"})
    assert_error(r, 401, "unauthenticated")
    assert await counts(service) == (1, 1)
