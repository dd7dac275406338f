"""Customer endpoints: create, list (cursor), get, audit trail, cancel.

Bad input gets a clear error and changes nothing: every bad call is followed by a row count.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from channels import Message
from orders.models import utcnow
from orders.workflow import OrderStatus
from server import protocol
from tests.conftest import Service, StartService
from tests.payments.helpers import online_order, payment_row, start_payment, wait_for_payment
from tests.support.asserts import assert_error, counts
from tests.support.clients import auth, order_body, token
from tests.support.sandbox import running_sandbox
from tests.support.writes import write_without_publishing

ALICE = token("alice")
POS1 = token("pos-1", role="pos", store_id="store-1")


async def create(service: Service, tok: str = ALICE, **overrides: Any) -> dict[str, Any]:
    """Create an order; its JSON."""
    r = await service.http.post("/api/orders", json=order_body(**overrides), headers=auth(tok))
    assert r.status_code == 201, r.text
    order: dict[str, Any] = r.json()["order"]
    return order


def item(**overrides: Any) -> dict[str, Any]:
    """One valid line item."""
    return {"sku": "tea", "name": "Masala tea", "quantity": 1, "unit_price": 100, **overrides}


# -- create -----------------------------------------------------------------------------------


async def test_a_cash_order_is_created_confirmed_for_the_caller(service: Service) -> None:
    body = order_body(
        items=[
            item(quantity=2, unit_price=1500),
            item(sku="bun", name="Bun maska", quantity=3, unit_price=999),
        ]
    )
    r = await service.http.post("/api/orders", json=body, headers=auth(ALICE))
    assert r.status_code == 201, r.text
    assert set(r.json()) == {"order"}
    order = r.json()["order"]
    assert order["id"].startswith("ord_")
    assert order["customer_id"] == "alice"
    assert order["store_id"] == "store-1"
    assert order["status"] == "CONFIRMED"
    assert order["payment_method"] == "cash" and order["payment_status"] == "CASH"
    assert order["needs_review"] is False
    assert order["created_at"] == order["updated_at"]
    assert order["amount"] == 2 * 1500 + 3 * 999
    assert order["currency"] == "INR"
    assert order["items"] == body["items"]
    assert order["version"] == 1
    assert order["expires_at"] is None
    assert await counts(service) == (1, 1)


async def test_each_write_is_counted_by_kind_and_source_and_timed_within_its_request(
    service: Service,
) -> None:
    def sample(name: str, **labels: str) -> float:
        return service.metrics.registry.get_sample_value(name, labels) or 0.0

    started = time.perf_counter()
    order = await create(service)
    r = await service.http.post(f"/api/orders/{order['id']}/cancel", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    elapsed = time.perf_counter() - started
    assert sample("events_written_total", kind="order.status", source="customer") == 2
    assert sample("write_seconds_count") == 2
    # Each write's time is measured inside the request: together they fit in the two requests.
    assert 0 < sample("write_seconds_sum") <= elapsed


async def test_an_online_order_starts_waiting_for_payment_with_an_expiry(service: Service) -> None:
    order = await create(service, method="online")
    assert order["status"] == "PENDING_PAYMENT"
    assert order["payment_method"] == "online" and order["payment_status"] == "UNPAID"
    created = datetime.fromisoformat(order["created_at"])
    expiry = timedelta(seconds=service.settings.order_expiry_seconds)
    assert datetime.fromisoformat(order["expires_at"]) == created + expiry


async def test_payment_method_defaults_to_online(service: Service) -> None:
    body = order_body()
    del body["payment_method"]
    r = await service.http.post("/api/orders", json=body, headers=auth(ALICE))
    assert r.status_code == 201, r.text
    assert r.json()["order"]["status"] == "PENDING_PAYMENT"


async def test_a_pos_terminal_creates_a_walk_in_order_for_its_own_store(service: Service) -> None:
    body = order_body()
    del body["store_id"]
    r = await service.http.post("/api/orders", json=body, headers=auth(POS1))
    assert r.status_code == 201, r.text
    assert r.json()["order"]["store_id"] == "store-1"
    same_store = await service.http.post(
        "/api/orders", json=order_body("store-1"), headers=auth(POS1)
    )
    assert same_store.status_code == 201, same_store.text
    other = await service.http.post("/api/orders", json=order_body("store-2"), headers=auth(POS1))
    assert_error(other, 403, "forbidden")
    assert await counts(service) == (2, 2)


async def test_a_hundred_items_is_the_most_one_order_may_hold(service: Service) -> None:
    items = [item(sku=f"sku-{i}") for i in range(100)]
    order = await create(service, items=items)
    assert len(order["items"]) == 100 and order["amount"] == 100 * 100


async def test_a_free_item_is_allowed(service: Service) -> None:
    assert (await create(service, items=[item(unit_price=0)]))["amount"] == 0


def _without(field: str) -> dict[str, Any]:
    body = order_body()
    del body[field]
    return body


def _item_without(field: str) -> dict[str, Any]:
    bad = item()
    del bad[field]
    return order_body(items=[bad])


#: name -> (body, the error code, the field the 422 must name or None).
BAD_BODIES: dict[str, tuple[object, str, str | None]] = {
    "a JSON array": ([order_body()], "invalid_json", None),
    "a JSON string": ("order", "invalid_json", None),
    "a JSON number": (1, "invalid_json", None),
    "JSON null": (None, "invalid_json", None),
    "missing items": (_without("items"), "validation_error", "items"),
    "missing currency": (_without("currency"), "validation_error", "currency"),
    "missing store_id": (_without("store_id"), "validation_error", "store_id"),
    "unknown field": (order_body(discount=10), "validation_error", "discount"),
    "customer_id": (order_body(customer_id="bob"), "validation_error", "customer_id"),
    "amount": (order_body(amount=1), "validation_error", "amount"),
    "status": (order_body(status="DELIVERED"), "validation_error", "status"),
    "store_id empty": (order_body(""), "validation_error", "store_id"),
    "store_id blank": (order_body("   "), "validation_error", "store_id"),
    "store_id a number": ({**order_body(), "store_id": 1}, "validation_error", "store_id"),
    "store_id too long": (order_body("s" * 201), "validation_error", "store_id"),
    "items empty": (order_body(items=[]), "validation_error", "items"),
    "items an object": (order_body(items={"sku": "tea"}), "validation_error", "items"),
    "items null": (order_body(items=None), "validation_error", "items"),
    "item not an object": (order_body(items=["tea"]), "validation_error", "items[0]"),
    "item unknown field": (
        order_body(items=[item(colour="red")]),
        "validation_error",
        "items[0].colour",
    ),
    "item missing sku": (_item_without("sku"), "validation_error", "items[0].sku"),
    "item missing name": (_item_without("name"), "validation_error", "items[0].name"),
    "item missing quantity": (_item_without("quantity"), "validation_error", "items[0].quantity"),
    "item missing unit_price": (
        _item_without("unit_price"),
        "validation_error",
        "items[0].unit_price",
    ),
    "sku empty": (order_body(items=[item(sku="")]), "validation_error", "items[0].sku"),
    "sku a number": (order_body(items=[item(sku=5)]), "validation_error", "items[0].sku"),
    "quantity negative": (
        order_body(items=[item(quantity=-1)]),
        "validation_error",
        "items[0].quantity",
    ),
    "quantity zero": (
        order_body(items=[item(quantity=0)]),
        "validation_error",
        "items[0].quantity",
    ),
    "quantity float": (
        order_body(items=[item(quantity=1.5)]),
        "validation_error",
        "items[0].quantity",
    ),
    "quantity whole float": (
        order_body(items=[item(quantity=2.0)]),
        "validation_error",
        "items[0].quantity",
    ),
    "quantity true": (
        order_body(items=[item(quantity=True)]),
        "validation_error",
        "items[0].quantity",
    ),
    "quantity a string": (
        order_body(items=[item(quantity="2")]),
        "validation_error",
        "items[0].quantity",
    ),
    "quantity huge": (
        order_body(items=[item(quantity=10_001)]),
        "validation_error",
        "items[0].quantity",
    ),
    "unit_price negative": (
        order_body(items=[item(unit_price=-1)]),
        "validation_error",
        "items[0].unit_price",
    ),
    "unit_price float": (
        order_body(items=[item(unit_price=9.99)]),
        "validation_error",
        "items[0].unit_price",
    ),
    "unit_price false": (
        order_body(items=[item(unit_price=False)]),
        "validation_error",
        "items[0].unit_price",
    ),
    "unit_price huge": (
        order_body(items=[item(unit_price=10**12)]),
        "validation_error",
        "items[0].unit_price",
    ),
    "second item bad": (
        order_body(items=[item(), item(quantity=-5)]),
        "validation_error",
        "items[1].quantity",
    ),
    "currency lowercase": (order_body(currency="inr"), "validation_error", "currency"),
    "currency too long": (order_body(currency="RUPEE"), "validation_error", "currency"),
    "currency too short": (order_body(currency="IN"), "validation_error", "currency"),
    "currency with newline": (order_body(currency="INR\n"), "validation_error", "currency"),
    "currency a number": (order_body(currency=356), "validation_error", "currency"),
    "payment_method unknown": (
        order_body(payment_method="crypto"),
        "validation_error",
        "payment_method",
    ),
    "payment_method null": (order_body(payment_method=None), "validation_error", "payment_method"),
    "101 items": (
        order_body(items=[item(sku=f"sku-{i}") for i in range(101)]),
        "validation_error",
        "items",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_a_bad_create_body_gets_a_clear_error_and_writes_nothing(
    service: Service, case: str
) -> None:
    body, code, field = BAD_BODIES[case]
    r = await service.http.post("/api/orders", content=orjson.dumps(body), headers=auth(ALICE))
    error = assert_error(r, 400 if code == "invalid_json" else 422, code)
    if field is not None:
        assert error["field"] == field
        assert field.split(".")[-1].split("[")[0] in error["message"]
    assert await counts(service) == (0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b'{"store_id": "store-1",',
        b"{'store_id': 'store-1'}",
        b'{"items": NaN}',
        b"\xff\xfe\x00",
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b"[" * 5000 + b"]" * 5000,
        b'{"store_id": "store-1"} trailing',
    ],
    ids=lambda raw: repr(raw[:24]),
)
async def test_a_body_that_is_not_json_gets_400_and_writes_nothing(
    service: Service, raw: bytes
) -> None:
    r = await service.http.post(
        "/api/orders", content=raw, headers={**auth(ALICE), "content-type": "application/json"}
    )
    assert_error(r, 400, "invalid_json")
    assert await counts(service) == (0, 0)


async def test_a_customer_order_without_store_id_is_422(service: Service) -> None:
    body = order_body()
    del body["store_id"]
    error = assert_error(
        await service.http.post("/api/orders", json=body, headers=auth(ALICE)),
        422,
        "validation_error",
    )
    assert error["field"] == "store_id"
    assert await counts(service) == (0, 0)


async def test_an_admin_cannot_create_orders(service: Service) -> None:
    r = await service.http.post(
        "/api/orders", json=order_body(), headers=auth(token("ops", role="admin"))
    )
    assert_error(r, 403, "forbidden")
    assert await counts(service) == (0, 0)


@pytest.mark.parametrize(
    "body",
    [
        order_body("store\u0000-1"),
        order_body(items=[item(sku="t\u0000ea")]),
        order_body(items=[item(name="Masala\u0000tea")]),
    ],
    ids=["store_id", "sku", "name"],
)
async def test_a_nul_character_in_a_text_field_is_never_a_500(
    service: Service, body: dict[str, Any]
) -> None:
    r = await service.http.post("/api/orders", json=body, headers=auth(ALICE))
    if r.status_code == 201:
        assert await counts(service) == (1, 1)
    else:
        assert_error(r, 422, "validation_error")
        assert await counts(service) == (0, 0)


# -- body size --------------------------------------------------------------------------------


def _padded_body(size: int) -> bytes:
    """A valid create body padded with whitespace to ``size`` bytes."""
    raw = orjson.dumps(order_body())
    return raw + b" " * (size - len(raw))


async def test_a_body_over_max_body_bytes_is_413_and_writes_nothing(
    start_service: StartService,
) -> None:
    service = await start_service(max_body_bytes=1024)
    r = await service.http.post("/api/orders", content=_padded_body(4096), headers=auth(ALICE))
    assert_error(r, 413, "payload_too_large")
    at_limit = await service.http.post(
        "/api/orders", content=_padded_body(1024), headers=auth(ALICE)
    )
    assert at_limit.status_code == 201, at_limit.text
    assert await counts(service) == (1, 1)


async def _chunks(raw: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


async def test_a_chunked_body_without_content_length_is_still_bounded(
    start_service: StartService,
) -> None:
    service = await start_service(max_body_bytes=1024)
    r = await service.http.post(
        "/api/orders", content=_chunks(_padded_body(8192), 256), headers=auth(ALICE)
    )
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "payload_too_large")
    assert await counts(service) == (0, 0)


async def test_a_small_chunked_body_is_accepted(start_service: StartService) -> None:
    service = await start_service(max_body_bytes=1024)
    r = await service.http.post(
        "/api/orders", content=_chunks(_padded_body(900), 100), headers=auth(ALICE)
    )
    assert r.status_code == 201, r.text
    assert await counts(service) == (1, 1)


async def raw_http(service: Service, head: bytes, body: bytes) -> tuple[int, bytes]:
    """Send hand-written request bytes; the response status and body (bounded waits)."""
    port = int(service.running.http.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            payload = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    return int(status_line.split()[1]), payload


async def test_a_declared_content_length_over_the_limit_is_refused_without_waiting_for_the_body(
    start_service: StartService,
) -> None:
    service = await start_service(max_body_bytes=1024)
    head = (
        b"POST /api/orders HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {ALICE}\r\nContent-Length: 10000000\r\n".encode()
    )
    # Only a few bytes of the declared ten megabytes ever arrive.
    status, payload = await raw_http(service, head, b'{"store_id": ')
    assert status == 413
    assert orjson.loads(payload)["error"]["code"] == "payload_too_large"
    assert await counts(service) == (0, 0)


async def test_a_chunked_upload_is_bounded_on_the_wire_too(start_service: StartService) -> None:
    service = await start_service(max_body_bytes=1024)
    head = (
        b"POST /api/orders HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {ALICE}\r\nTransfer-Encoding: chunked\r\n".encode()
    )
    chunk = b" " * 512
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    status, payload = await raw_http(service, head, body)
    assert status == 413
    assert orjson.loads(payload)["error"]["code"] == "payload_too_large"
    assert await counts(service) == (0, 0)


# -- list -------------------------------------------------------------------------------------


async def test_cursor_pagination_walks_every_order_exactly_once_newest_first(
    service: Service,
) -> None:
    created = [(await create(service))["id"] for _ in range(25)]
    await create(service, token("bob"))
    seen: list[str] = []
    pages: list[int] = []
    cursor: str | None = None
    while True:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        r = await service.http.get("/api/orders", params=params, headers=auth(ALICE))
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"orders", "next_cursor"}
        pages.append(len(body["orders"]))
        seen.extend(o["id"] for o in body["orders"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "pagination does not end"
    assert pages == [10, 10, 5]
    assert seen == list(reversed(created))


async def test_a_page_that_ends_exactly_at_the_last_order_has_no_next_cursor(
    service: Service,
) -> None:
    for _ in range(10):
        await create(service)
    r = await service.http.get("/api/orders", params={"limit": "10"}, headers=auth(ALICE))
    assert len(r.json()["orders"]) == 10
    assert r.json()["next_cursor"] is None


async def test_a_customer_with_no_orders_gets_an_empty_list(service: Service) -> None:
    r = await service.http.get("/api/orders", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    assert r.json() == {"orders": [], "next_cursor": None}


def _cursor(document: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(document)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "invalid_query"),
        ({"limit": "-1"}, "invalid_query"),
        ({"limit": "101"}, "invalid_query"),
        ({"limit": "ten"}, "invalid_query"),
        ({"limit": "1.5"}, "invalid_query"),
        ({"limit": "99999999999999999999999"}, "invalid_query"),
        ({"cursor": "!!!"}, "invalid_cursor"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": "é"}, "invalid_cursor"),
        ({"cursor": _cursor(5)}, "invalid_cursor"),
        ({"cursor": _cursor([1, 2])}, "invalid_cursor"),
        ({"cursor": _cursor(["yesterday", "ord_x"])}, "invalid_cursor"),
        ({"cursor": _cursor(["2024-01-01T00:00:00+00:00"])}, "invalid_cursor"),
        ({"cursor": _cursor(["2024-01-01T00:00:00+00:00", "ord_x", 3])}, "invalid_cursor"),
        (
            {"cursor": _cursor({"created": "2024-01-01T00:00:00+00:00", "id": "ord_x"})},
            "invalid_cursor",
        ),
        ({"cursor": _cursor(["2024-01-01T00:00:00", "ord_x"])}, "invalid_cursor"),
    ],
    ids=lambda p: repr(p) if isinstance(p, dict) else str(p),
)
async def test_a_bad_limit_or_cursor_is_400(
    service: Service, params: dict[str, str], code: str
) -> None:
    await create(service)
    r = await service.http.get("/api/orders", params=params, headers=auth(ALICE))
    assert_error(r, 400, code)


@pytest.mark.parametrize(
    "moment",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+00:00"],
)
async def test_a_cursor_at_the_edge_of_time_is_400_never_a_500(
    service: Service, moment: str
) -> None:
    # Defect 6: a cursor whose instant falls outside datetime's range once moved to UTC
    # raised OverflowError (500).
    await create(service)
    cursor = _cursor([moment, "ord_" + "0" * 24])
    r = await service.http.get("/api/orders", params={"cursor": cursor}, headers=auth(ALICE))
    assert_error(r, 400, "invalid_cursor")


@pytest.mark.parametrize("micros", ["0", "9" * 16])
async def test_any_cursor_of_the_documented_form_is_answered(service: Service, micros: str) -> None:
    # The cursor's pattern in /openapi.json describes every cursor the server takes.
    await create(service)
    cursor = f"{micros}_ord_{'f' * 24}"
    r = await service.http.get("/api/orders", params={"cursor": cursor}, headers=auth(ALICE))
    assert r.status_code == 200, r.text
    assert len(r.json()["orders"]) == (0 if micros == "0" else 1)


# -- get --------------------------------------------------------------------------------------


async def test_the_owner_gets_the_order_with_its_payments(service: Service) -> None:
    order = await create(service)
    r = await service.http.get(f"/api/orders/{order['id']}", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "order": order,
        "payments": [],
        "payment_status": order["payment_status"],
        "status_updated": False,
    }


async def test_the_orders_store_can_get_it(service: Service) -> None:
    order = await create(service)
    r = await service.http.get(f"/api/orders/{order['id']}", headers=auth(POS1))
    assert r.status_code == 200, r.text
    assert r.json()["order"]["id"] == order["id"]


@pytest.mark.parametrize(
    ("method", "suffix", "tok"),
    [
        ("GET", "", ALICE),
        ("GET", "/events", ALICE),
        ("POST", "/cancel", ALICE),
        ("POST", "/status", POS1),
    ],
    ids=["get", "events", "cancel", "pos-status"],
)
@pytest.mark.parametrize(
    "order_id",
    ["ord_doesnotexist", "x" * 300, "%00", "ord_%00x", "%C3%A9", "' OR 1=1 --"],
    ids=["unknown", "very-long", "nul", "embedded-nul", "non-ascii", "sql"],
)
async def test_an_unknown_or_strange_order_id_is_404_and_changes_nothing(
    service: Service, order_id: str, method: str, suffix: str, tok: str
) -> None:
    await create(service)
    prefix = "/api/pos/orders" if suffix == "/status" else "/api/orders"
    body = {"status": "CANCELLED"} if suffix == "/status" else None
    r = await service.http.request(
        method, f"{prefix}/{order_id}{suffix}", json=body, headers=auth(tok)
    )
    assert_error(r, 404, "not_found")
    assert await counts(service) == (1, 1)


# -- audit trail ------------------------------------------------------------------------------


async def test_the_audit_trail_lists_every_change_oldest_first(service: Service) -> None:
    order = await create(service)
    for status, note in [("PREPARING", None), ("READY", "shelf 3"), ("DELIVERED", None)]:
        body: dict[str, Any] = {"status": status} | ({"note": note} if note else {})
        r = await service.http.post(
            f"/api/pos/orders/{order['id']}/status", json=body, headers=auth(POS1)
        )
        assert r.status_code == 200, r.text
    r = await service.http.get(f"/api/orders/{order['id']}/events", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["order_id"] == order["id"]
    events = body["events"]
    assert [e["status"] for e in events] == ["CONFIRMED", "PREPARING", "READY", "DELIVERED"]
    assert [e["previous_status"] for e in events] == [None, "CONFIRMED", "PREPARING", "READY"]
    assert [e["source"] for e in events] == ["customer", "pos", "pos", "pos"]
    assert [e["actor"] for e in events] == ["customer:alice", "pos:pos-1", "pos:pos-1", "pos:pos-1"]
    assert [e["note"] for e in events] == [None, None, "shelf 3", None]
    assert all(e["order_id"] == order["id"] and e["kind"] == "order.status" for e in events)
    ids = [e["event_id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 4
    stamps = [e["at"] for e in events]
    assert stamps == sorted(stamps)
    same = await service.http.get(f"/api/orders/{order['id']}/events", headers=auth(POS1))
    assert same.json() == body


async def test_a_change_the_service_makes_itself_is_in_the_audit_trail_as_the_system(
    service: Service,
) -> None:
    order = await create(service)
    await write_without_publishing(service, order["id"], OrderStatus.PREPARING)
    r = await service.http.get(f"/api/orders/{order['id']}/events", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    last = r.json()["events"][-1]
    assert (last["status"], last["source"], last["actor"]) == ("PREPARING", "system", "system")


async def test_the_audit_trail_of_an_unknown_order_is_404(service: Service) -> None:
    assert_error(
        await service.http.get("/api/orders/ord_nope/events", headers=auth(ALICE)), 404, "not_found"
    )


# -- cancel -----------------------------------------------------------------------------------


async def test_the_owner_cancels_a_confirmed_order_with_a_reason(service: Service) -> None:
    order = await create(service)
    r = await service.http.post(
        f"/api/orders/{order['id']}/cancel", json={"reason": "changed my mind"}, headers=auth(ALICE)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["order"]["status"] == "CANCELLED"
    assert body["order"]["version"] == 2
    assert body["event"]["status"] == "CANCELLED"
    assert body["event"]["previous_status"] == "CONFIRMED"
    assert body["event"]["source"] == "customer"
    assert body["event"]["note"] == "changed my mind"
    assert await counts(service) == (1, 2)


async def test_a_cancel_stamps_the_order_and_its_event_with_the_time_of_the_cancel(
    service: Service,
) -> None:
    order = await create(service)
    created = datetime.fromisoformat(order["created_at"])
    # By the clock, not a fixed sleep: the cancel happens strictly after the creation.
    async with asyncio.timeout(5):
        while utcnow() <= created:
            await asyncio.sleep(0.001)
    r = await service.http.post(f"/api/orders/{order['id']}/cancel", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    cancelled = r.json()
    updated = datetime.fromisoformat(cancelled["order"]["updated_at"])
    assert updated > created
    assert cancelled["order"]["created_at"] == order["created_at"]
    assert datetime.fromisoformat(cancelled["event"]["at"]) == updated
    trail = await service.http.get(f"/api/orders/{order['id']}/events", headers=auth(ALICE))
    assert [datetime.fromisoformat(e["at"]) for e in trail.json()["events"]] == [created, updated]


async def test_a_cancel_of_a_paid_order_refunds_it_in_the_same_change_and_publishes_every_event(
    service: Service,
) -> None:
    order = await create(service)
    r = await service.http.post(
        f"/api/pos/orders/{order['id']}/payments",
        json={"method": "cash", "amount": order["amount"]},
        headers=auth(POS1),
    )
    assert r.status_code == 201, r.text
    # On the broker itself: a hub could also fill the socket from the log, the publish cannot.
    async with service.broker.subscribe(service.publisher.channel("customer:alice")) as sub:
        r = await service.http.post(f"/api/orders/{order['id']}/cancel", headers=auth(ALICE))
        assert r.status_code == 200, r.text
        cancelled = r.json()
        sentinel = (await create(service))["id"]
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while not events or events[-1]["order_id"] != sentinel:
                item = await sub.get()
                # The order's first three events (created, paid) may still be on their way.
                if isinstance(item, Message) and protocol.unpack(item.data)[0] > 3:
                    events.append(orjson.loads(protocol.unpack(item.data)[1]))
    # The answer is the order as the refund left it, with the cancel as its event.
    assert cancelled["order"]["status"] == "CANCELLED"
    assert cancelled["order"]["payment_status"] == "REFUNDED"
    assert cancelled["order"]["payment_summary"]["refunded"] == order["amount"]
    assert cancelled["order"]["version"] == 4
    assert (cancelled["event"]["status"], cancelled["event"]["event_id"]) == ("CANCELLED", 4)
    # Every event of the change is published, in order, right after the commit; then the
    # sentinel (the new order's first event).
    assert [(e["seq"], e["kind"], e["status"]) for e in events] == [
        (4, "order.status", "CANCELLED"),
        (5, "refund.status", "SUCCEEDED"),
        (6, "payment.status", "REFUNDED"),
        (7, "receipt.issued", "ISSUED"),
        (8, "order.status", "CONFIRMED"),
    ]
    assert events[-2]["order"] == cancelled["order"]


async def test_a_cancel_whose_only_refund_goes_to_a_gateway_publishes_its_request_with_it(
    start_service: StartService,
) -> None:
    async with running_sandbox() as sandbox:
        service = await start_service(**sandbox.settings())
        order_id = await online_order(service)
        started = await start_payment(service, order_id)
        payment = await payment_row(service, started["payment"]["id"])
        await sandbox.act(payment.gateway_ref, "approve")
        await wait_for_payment(service, payment.id, "COMPLETED")
        # On the broker itself: a hub could also fill a socket from the log, the publish cannot.
        async with service.broker.subscribe(service.publisher.channel("customer:alice")) as sub:
            r = await service.http.post(f"/api/orders/{order_id}/cancel", headers=auth(ALICE))
            assert r.status_code == 200, r.text
            cancel_id = r.json()["event"]["event_id"]
            sentinel = (await create(service))["id"]
            events: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                while not events or events[-1]["order_id"] != sentinel:
                    item = await sub.get()
                    if isinstance(item, Message):
                        events.append(orjson.loads(protocol.unpack(item.data)[1]))
    # The payment's own events may still have been on their way when the subscription began.
    after = [e for e in events if e["event_id"] >= cancel_id]
    # The change added one event of its own (the refund requested): it goes out with the
    # cancel, then what the gateway's answer wrote, then the sentinel.
    assert [(e["kind"], e["status"]) for e in after] == [
        ("order.status", "CANCELLED"),
        ("refund.status", "REQUESTED"),
        ("refund.status", "SUCCEEDED"),
        ("payment.status", "REFUNDED"),
        ("receipt.issued", "ISSUED"),
        ("order.status", "CONFIRMED"),
    ]
    first = after[0]["seq"]
    assert [e["seq"] for e in after] == list(range(first, first + 6))


async def test_someone_elses_order_cannot_be_cancelled_or_moved_and_looks_like_no_order(
    service: Service,
) -> None:
    order = await create(service)
    bob, store2 = token("bob"), token("pos-2", role="pos", store_id="store-2")
    for tok, path, body in [
        (bob, f"/api/orders/{order['id']}/cancel", None),
        (store2, f"/api/orders/{order['id']}/cancel", None),
        (store2, f"/api/pos/orders/{order['id']}/status", {"status": "PREPARING"}),
    ]:
        assert_error(await service.http.post(path, json=body, headers=auth(tok)), 404, "not_found")
    assert await counts(service) == (1, 1)
    got = await service.http.get(f"/api/orders/{order['id']}", headers=auth(ALICE))
    assert got.json()["order"] == order


async def test_an_admin_sees_and_cancels_anyones_order_as_the_system(service: Service) -> None:
    order = await create(service)
    admin = token("ops", role="admin")
    got = await service.http.get(f"/api/orders/{order['id']}", headers=auth(admin))
    assert got.status_code == 200, got.text
    assert got.json()["order"] == order
    r = await service.http.post(f"/api/orders/{order['id']}/cancel", headers=auth(admin))
    assert r.status_code == 200, r.text
    e = r.json()["event"]
    assert (e["status"], e["source"], e["actor"]) == ("CANCELLED", "system", "admin:ops")


async def test_the_owner_cancels_an_unpaid_order_without_a_body(service: Service) -> None:
    order = await create(service, method="online")
    r = await service.http.post(f"/api/orders/{order['id']}/cancel", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    assert r.json()["order"]["status"] == "CANCELLED"


async def test_the_store_may_cancel_an_order_being_prepared(service: Service) -> None:
    order = await create(service)
    r = await service.http.post(
        f"/api/pos/orders/{order['id']}/status", json={"status": "PREPARING"}, headers=auth(POS1)
    )
    assert r.status_code == 200, r.text
    r = await service.http.post(f"/api/orders/{order['id']}/cancel", json={}, headers=auth(POS1))
    assert r.status_code == 200, r.text
    assert r.json()["event"]["source"] == "pos"


async def test_a_customer_cannot_cancel_once_preparation_started_and_is_told_what_is_allowed(
    service: Service,
) -> None:
    order = await create(service)
    r = await service.http.post(
        f"/api/pos/orders/{order['id']}/status", json={"status": "PREPARING"}, headers=auth(POS1)
    )
    assert r.status_code == 200, r.text
    before = await counts(service)
    error = assert_conflict(
        await service.http.post(f"/api/orders/{order['id']}/cancel", headers=auth(ALICE))
    )
    assert error["status"] == "PREPARING" and error["allowed"] == []
    assert await counts(service) == before


def assert_conflict(response: httpx.Response) -> dict[str, Any]:
    """A 409 invalid_transition with the current status and the allowed list."""
    assert response.status_code == 409, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["code"] == "invalid_transition"
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["allowed"], list)
    return error


async def test_cancelling_twice_is_409_and_changes_nothing(service: Service) -> None:
    order = await create(service)
    first = await service.http.post(f"/api/orders/{order['id']}/cancel", headers=auth(ALICE))
    assert first.status_code == 200, first.text
    before = await counts(service)
    error = assert_conflict(
        await service.http.post(f"/api/orders/{order['id']}/cancel", headers=auth(ALICE))
    )
    assert error["status"] == "CANCELLED" and error["allowed"] == []
    assert await counts(service) == before


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{", 400, "invalid_json"),
        (b"[]", 400, "invalid_json"),
        (b'"please"', 400, "invalid_json"),
        (b'{"reason": 5}', 422, "validation_error"),
        (b'{"reason": ""}', 422, "validation_error"),
        (b'{"reason": "' + b"x" * 501 + b'"}', 422, "validation_error"),
        (b'{"status": "DELIVERED"}', 422, "validation_error"),
        (b'{"reason": "ok", "refund": true}', 422, "validation_error"),
    ],
    ids=lambda v: repr(v[:24]) if isinstance(v, bytes) else str(v),
)
async def test_a_bad_cancel_body_gets_a_clear_error_and_changes_nothing(
    service: Service, raw: bytes, status: int, code: str
) -> None:
    order = await create(service)
    r = await service.http.post(
        f"/api/orders/{order['id']}/cancel",
        content=raw,
        headers={**auth(ALICE), "content-type": "application/json"},
    )
    assert_error(r, status, code)
    assert await counts(service) == (1, 1)
    now = (await service.http.get(f"/api/orders/{order['id']}", headers=auth(ALICE))).json()[
        "order"
    ]
    assert now == order


async def test_cancelling_an_unknown_order_is_404(service: Service) -> None:
    assert_error(
        await service.http.post("/api/orders/ord_nope/cancel", headers=auth(ALICE)),
        404,
        "not_found",
    )
    assert await counts(service) == (0, 0)
