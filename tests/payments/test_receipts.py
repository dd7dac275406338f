"""Receipts: a sale receipt once an order is paid in full, a refund receipt per refund that
SUCCEEDED, numbered per store with no gap (also under concurrent payments, also when a
transaction that took a number fails), never changed after issue, live on the streams, and a
printable page that escapes what users typed."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import orjson
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import connect

from orders.db import Database
from orders.hooks import Hooks
from orders.models import Event, Receipt, StreamEvent, receipts_table
from orders.receipts import inclusive_tax
from reconciler.worker import Reconciler
from server.api import schemas
from tests.conftest import Service, StartService
from tests.payments.helpers import online_order, payment_row, wait_for_payment
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body, recv_events, recv_json, token
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.servers import free_port

ALICE = token("alice")
BOB = token("bob")
POS1 = token("till-1", role="pos", store_id="store-1")
POS2 = token("till-9", role="pos", store_id="store-2")
ADMIN = token("ops", role="admin")
DEAD = f"http://127.0.0.1:{free_port()}"
#: Every element the printable page may contain: no script, link, image or frame.
_PAGE_TAGS = {
    *"html head meta title style body main h1 h2 span dl dt dd table thead tbody tfoot".split(),
    *"tr th td br small p".split(),
}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def paying(start_service: StartService, sandbox: Sandbox) -> Service:
    return await start_service(**sandbox.settings())


async def cash_order(
    service: Service, customer: str = ALICE, store: str = "store-1", **overrides: Any
) -> dict[str, Any]:
    r = await service.http.post(
        "/api/orders", json=order_body(store, **overrides), headers=auth(customer)
    )
    assert r.status_code == 201, r.text
    order: dict[str, Any] = r.json()["order"]
    return order


async def record(
    service: Service, order_id: str, amount: int, tok: str = POS1, **extra: Any
) -> httpx.Response:
    return await service.http.post(
        f"/api/pos/orders/{order_id}/payments",
        json={"method": "cash", "amount": amount, **extra},
        headers=auth(tok),
    )


async def refund(service: Service, order_id: str, **body: Any) -> httpx.Response:
    return await service.http.post(
        f"/api/orders/{order_id}/refunds",
        json={"reason": "cold soup", **body},
        headers=auth(POS1),
    )


async def listed(service: Service, order_id: str, tok: str = ALICE) -> list[dict[str, Any]]:
    r = await service.http.get(f"/api/orders/{order_id}/receipts", headers=auth(tok))
    assert r.status_code == 200, r.text
    # Every receipt is what the contract says, to the field.
    msgspec.json.decode(r.content, type=schemas.ReceiptList)
    found: list[dict[str, Any]] = r.json()["receipts"]
    return found


async def stored(service: Service, order_id: str) -> list[Receipt]:
    async with service.db.read() as session:
        return list(
            (
                await session.execute(
                    select(Receipt).where(Receipt.order_id == order_id).order_by(Receipt.number)
                )
            ).scalars()
        )


async def settle(service: Service, sandbox: Sandbox, payment_id: str) -> None:
    row = await payment_row(service, payment_id)
    await sandbox.act(row.gateway_ref, "approve")
    await wait_for_payment(service, payment_id, "COMPLETED")


def test_inclusive_tax_is_in_minor_units_rounded_half_up() -> None:
    assert inclusive_tax(3000, 0) == 0
    assert inclusive_tax(3000, 1800) == 458  # 457.63
    assert inclusive_tax(118, 1800) == 18  # exactly 18
    assert inclusive_tax(59, 1800) == 9  # 9.0
    assert inclusive_tax(1, 1800) == 0  # 0.15
    assert inclusive_tax(105, 500) == 5  # 5.0
    assert inclusive_tax(21, 500) == 1  # 1.0
    assert inclusive_tax(31, 500) == 1  # 1.476
    assert inclusive_tax(210, 1000) == 19  # 19.09
    assert inclusive_tax(11, 1000) == 1  # exactly 1
    assert inclusive_tax(33, 1000) == 3  # exactly 3
    assert inclusive_tax(5, 10_000) == 3  # 2.5: half goes up


async def test_a_split_payment_has_one_sale_receipt_issued_by_the_second_part(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id = await online_order(paying)
    r = await paying.http.get(f"/api/orders/{order_id}", headers=auth(ALICE))
    total = r.json()["order"]["amount"]
    part = total * 60 // 100
    first = await paying.http.post(
        f"/api/orders/{order_id}/payments",
        json={"gateway": "sandbox", "amount": part},
        headers=auth(ALICE),
    )
    assert first.status_code == 201, first.text
    await settle(paying, sandbox, first.json()["payment"]["id"])
    assert await listed(paying, order_id) == []
    second = await paying.http.post(
        f"/api/orders/{order_id}/payments", json={"gateway": "sandbox"}, headers=auth(ALICE)
    )
    assert second.status_code == 201, second.text
    await settle(paying, sandbox, second.json()["payment"]["id"])
    (receipt,) = await listed(paying, order_id)
    assert receipt["kind"] == "sale" and receipt["number"] == 1
    assert receipt["label"] == "store-1-000001" and receipt["store_id"] == "store-1"
    assert receipt["customer_id"] == "alice" and receipt["amount"] == total
    assert receipt["tax"] is None and receipt["refund"] is None
    assert [p["amount"] for p in receipt["payments"]] == [part, total - part]
    assert {p["gateway"] for p in receipt["payments"]} == {"sandbox"}
    assert all(p["reference"] and p["at"] for p in receipt["payments"])
    assert receipt["totals"] == {"paid": total, "refunded": 0, "outstanding": 0}
    assert receipt["lines"] == [
        {"sku": "tea", "name": "Masala tea", "quantity": 2, "unit_price": 1500, "amount": 3000}
    ]
    # Issued by the transaction that paid it: its event follows the CONFIRMED one, at the
    # same instant, on the customer's and the store's streams.
    events = [e for e in await _events(paying, order_id) if e.kind != "payment.observation"]
    kinds = [(e.kind, e.to_status) for e in events]
    assert kinds[-2:] == [("order.status", "CONFIRMED"), ("receipt.issued", "ISSUED")]
    issued = events[-1]
    assert issued.created_at == events[-2].created_at
    assert issued.data["receipt"]["label"] == "store-1-000001"
    assert issued.data["order"]["payment_summary"]["outstanding"] == 0
    assert await _streams_of(paying, issued.id) == ["customer:alice", "store:store-1"]


async def test_a_cash_order_paid_at_the_counter_gets_its_receipt_with_the_tax_included(
    start_service: StartService,
) -> None:
    service = await start_service(receipt_tax_rate_bp=1800)
    order = await cash_order(service)
    # Not paid yet: a cash order is CONFIRMED with its amount outstanding, and has no receipt.
    assert await listed(service, order["id"]) == []
    r = await record(service, order["id"], 1000, reference="Z-1")
    assert r.status_code == 201, r.text
    assert await listed(service, order["id"]) == []
    r = await record(service, order["id"], order["amount"] - 1000, method="card_terminal")
    assert r.status_code == 201, r.text
    (receipt,) = await listed(service, order["id"])
    assert receipt["amount"] == order["amount"] == 3000
    assert receipt["tax"] == {"rate_bp": 1800, "included": True, "amount": 458, "net": 2542}
    methods = [(p["method"], p["reference"], p["amount"]) for p in receipt["payments"]]
    assert methods == [("cash", "Z-1", 1000), ("card_terminal", None, 2000)]
    assert receipt["totals"]["outstanding"] == 0
    # Paying more is refused, so nothing can issue a second sale receipt.
    assert_error(await record(service, order["id"], 1), 422, "validation_error")
    assert len(await listed(service, order["id"])) == 1


async def test_each_succeeded_refund_has_a_receipt_and_no_receipt_ever_changes(
    start_service: StartService,
) -> None:
    service = await start_service(receipt_tax_rate_bp=1800)
    order = await cash_order(service)
    assert (await record(service, order["id"], order["amount"])).status_code == 201
    (sale,) = await stored(service, order["id"])
    sale_text, sale_api = sale.document, await _one(service, order["id"], sale.number)
    assert sale_api == sale_text.encode()
    assert sale.sha256 == hashlib.sha256(sale_text.encode()).hexdigest()
    # A later rate applies to new sales only: a refund of this order keeps the sale's rate.
    assert (await refund(service, order["id"], amount=1180)).status_code == 201
    assert (await refund(service, order["id"])).status_code == 201
    receipts = await listed(service, order["id"])
    assert [(r["number"], r["kind"], r["amount"]) for r in receipts] == [
        (1, "sale", 3000),
        (2, "refund", 1180),
        (3, "refund", 1820),
    ]
    first_refund, second_refund = receipts[1], receipts[2]
    assert first_refund["tax"] == {"rate_bp": 1800, "included": True, "amount": 180, "net": 1000}
    assert first_refund["refund"]["reason"] == "cold soup"
    assert [r["amount"] for r in first_refund["refunds"]] == [1180]
    assert first_refund["totals"] == {"paid": 3000, "refunded": 1180, "outstanding": 0}
    assert [r["amount"] for r in second_refund["refunds"]] == [1180, 1820]
    assert second_refund["totals"]["refunded"] == 3000
    assert [p["status"] for p in second_refund["payments"]] == ["REFUNDED"]
    # The sale receipt is what it was at issue, byte for byte: in the table and in the API.
    rows = await stored(service, order["id"])
    assert rows[0].document == sale_text and rows[0].sha256 == sale.sha256
    assert await _one(service, order["id"], 1) == sale_text.encode()
    assert receipts[0]["payments"][0]["status"] == "COMPLETED"
    assert receipts[0]["totals"]["refunded"] == 0
    # And nothing can change it: the database refuses, whoever asks.
    for statement in (
        update(receipts_table).where(receipts_table.c.number == 1).values(document="{}"),
        text("DELETE FROM receipts"),
    ):
        with pytest.raises(DBAPIError, match="receipts are immutable"):
            async with service.db.transaction() as session:
                await session.execute(statement)
    async with service.db.write() as session:
        receipt = await session.get(Receipt, rows[0].id)
        assert receipt is not None
        receipt.document = "{}"
        with pytest.raises(TypeError, match="immutable"):
            await session.flush()
    assert (await stored(service, order["id"]))[0].document == sale_text


async def test_a_gateway_refund_has_its_receipt_once_it_succeeded_and_only_once(
    paying: Service, sandbox: Sandbox, start_service: StartService
) -> None:
    order_id = await online_order(paying)
    started = await paying.http.post(
        f"/api/orders/{order_id}/payments", json={"gateway": "sandbox"}, headers=auth(ALICE)
    )
    await settle(paying, sandbox, started.json()["payment"]["id"])
    assert [r["kind"] for r in await listed(paying, order_id)] == ["sale"]
    # Asked through an instance that cannot reach the gateway: REQUESTED, no receipt.
    cut_off = await start_service(**{**sandbox.settings(), "sandbox_api_base": DEAD})
    r = await refund(cut_off, order_id, amount=700)
    assert r.status_code == 201, r.text
    assert r.json()["refunds"][0]["status"] == "REQUESTED"
    assert [r["kind"] for r in await listed(paying, order_id)] == ["sale"]
    # Due again after a backoff of at most a second (its first failure).
    reconciler = Reconciler(paying.services.settlement)
    async with asyncio.timeout(10):
        while len(await listed(paying, order_id)) < 2:
            await reconciler.run_once()
            await asyncio.sleep(0.2)
    await reconciler.run_once()
    receipts = await listed(paying, order_id)
    assert [(r["number"], r["kind"]) for r in receipts] == [(1, "sale"), (2, "refund")]
    assert receipts[1]["refund"]["amount"] == 700
    assert receipts[1]["refund"]["reference"].startswith("sbx_re_")
    assert len(await _events(paying, order_id, "receipt.issued")) == 2


class _Contention(Hooks):
    """Before each COMMIT of a transaction that issued a receipt: hold it a moment, and count
    the writers PostgreSQL has waiting on a lock meanwhile (the race, observed)."""

    def __init__(self) -> None:
        self.db: Database | None = None
        self.waiting: list[int] = []

    async def before_commit(self, session: AsyncSession) -> None:
        if self.db is None or not await _issues_receipt(session, self.db):
            return
        if self.db.is_postgres:
            async with self.db.read() as probe:
                count = await probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                )
                self.waiting.append(int(count.scalar_one()))
        await asyncio.sleep(0.01)


async def test_receipt_numbers_per_store_have_no_gap_under_concurrent_payments(
    start_service: StartService,
) -> None:
    hooks = _Contention()
    service = await start_service(hooks=hooks, db_pool_size=12)
    # Different customers: the store's stream and its counter are all they share.
    orders = [await cash_order(service, token(f"c{i}")) for i in range(20)]
    others = [await cash_order(service, token(f"d{i}"), "store-2") for i in range(8)]
    hooks.db = service.db
    mixed = orders[:10] + others[:4] + orders[10:] + others[4:]
    answers = await asyncio.gather(
        *(
            record(service, o["id"], o["amount"], POS1 if o["store_id"] == "store-1" else POS2)
            for o in mixed
        )
    )
    assert [a.status_code for a in answers] == [201] * len(mixed)
    async with service.db.read() as session:
        rows = list((await session.execute(select(Receipt).order_by(Receipt.id))).scalars())
    by_store: dict[str, list[int]] = {}
    for row in rows:
        by_store.setdefault(row.store_id, []).append(row.number)
    assert sorted(by_store["store-1"]) == list(range(1, 21))
    assert sorted(by_store["store-2"]) == list(range(1, 9))
    # In commit order, too: the counter row is held to the end of its transaction.
    assert by_store["store-1"] == sorted(by_store["store-1"])
    assert {row.order_id for row in rows} == {o["id"] for o in mixed}
    if service.db.is_postgres:
        # The payments really overlapped: writers queued behind a receipt being issued.
        assert max(hooks.waiting) >= 1, hooks.waiting


class _FailOnce(Hooks):
    """Fail the COMMIT of the next transaction that issued a receipt, once."""

    def __init__(self) -> None:
        self.db: Database | None = None
        self.armed = False
        self.failed = 0

    async def before_commit(self, session: AsyncSession) -> None:
        if self.armed and self.db is not None and await _issues_receipt(session, self.db):
            self.armed = False
            self.failed += 1
            raise RuntimeError("forced failure after a receipt number was taken")


async def test_a_transaction_that_took_a_number_and_failed_gives_it_back(
    start_service: StartService,
) -> None:
    hooks = _FailOnce()
    service = await start_service(hooks=hooks)
    first, second = await cash_order(service), await cash_order(service)
    hooks.db, hooks.armed = service.db, True
    r = await record(service, first["id"], first["amount"])
    assert r.status_code == 500 and hooks.failed == 1
    assert await stored(service, first["id"]) == []
    assert (await record(service, second["id"], second["amount"])).status_code == 201
    assert (await record(service, first["id"], first["amount"])).status_code == 201
    assert [r.number for r in await stored(service, second["id"])] == [1]
    assert [r.number for r in await stored(service, first["id"])] == [2]


async def test_the_printable_page_escapes_what_users_typed(service: Service) -> None:
    hostile = '<script>alert("x")</script>'
    order = await cash_order(
        service, items=[{"sku": "<b>sku", "name": "<img src=x>", "quantity": 1, "unit_price": 900}]
    )
    assert (await record(service, order["id"], 900, reference=hostile)).status_code == 201
    reason = "\"><iframe src='//evil'>&amp;"
    assert (await refund(service, order["id"], amount=100, reason=reason)).status_code == 201
    for number in (1, 2):
        pages = [
            await service.http.get(
                f"/api/orders/{order['id']}/receipts/{number}.html", headers=auth(ALICE)
            ),
            await service.http.get(
                f"/api/orders/{order['id']}/receipts/{number}",
                headers={**auth(ALICE), "Accept": "text/html,application/json;q=0.9"},
            ),
        ]
        for page in pages:
            assert page.status_code == 200, page.text
            assert page.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in page.headers["content-security-policy"]
            body = page.text
            assert body.startswith("<!doctype html>") and "@media print" in body
            for raw in (hostile, "<img src=x>", "<b>sku", reason, "<iframe"):
                assert raw not in body
            assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in body
            assert "&lt;img src=x&gt;" in body
            # Self-contained: nothing to fetch.
            tags = re.findall(r"<([a-z]+)\b([^>]*)>", body)
            assert {name for name, _ in tags} <= _PAGE_TAGS
            assert not [attrs for _, attrs in tags if "src=" in attrs or "href=" in attrs]
        assert pages[0].text == pages[1].text
    refund_page = pages[0].text
    assert "&quot;&gt;&lt;iframe src=&#x27;//evil&#x27;&gt;&amp;amp;" in refund_page
    assert "Refund receipt store-1-000002" in refund_page and "1.00 INR" in refund_page
    # Without text/html first it is the JSON document.
    r = await service.http.get(f"/api/orders/{order['id']}/receipts/2", headers=auth(ALICE))
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["refund"]["reason"] == reason


async def test_another_customers_receipts_are_404_like_their_orders(service: Service) -> None:
    order = await cash_order(service)
    assert (await record(service, order["id"], order["amount"])).status_code == 201
    base = f"/api/orders/{order['id']}/receipts"
    for path in (base, f"{base}/1", f"{base}/1.html"):
        for tok in (BOB, POS2):
            assert_error(await service.http.get(path, headers=auth(tok)), 404, "not_found")
        for tok in (ALICE, POS1, ADMIN):
            assert (await service.http.get(path, headers=auth(tok))).status_code == 200
        assert_error(await service.http.get(path), 401, "unauthenticated")
    for missing in (
        f"{base}/2",
        f"{base}/0",
        f"{base}/2.html",
        f"{base}/{2**70}",
        f"{base}/{'9' * 5000}",
        f"{base}/-1",
        f"{base}/1x",
        f"{base}/1.htm",
    ):
        assert_error(await service.http.get(missing, headers=auth(ALICE)), 404, "not_found")
    assert_error(
        await service.http.get("/api/orders/ord_nope/receipts", headers=auth(ALICE)),
        404,
        "not_found",
    )


async def test_a_receipt_arrives_live_on_the_customers_and_the_stores_sockets(
    service: Service,
) -> None:
    order = await cash_order(service)
    async with (
        connect(f"{service.ws_url}?token={ALICE}") as customer,
        connect(f"{service.ws_url}?token={POS1}") as store,
    ):
        for ws in (customer, store):
            assert (await recv_json(ws))["type"] == "hello"
        assert (await record(service, order["id"], order["amount"])).status_code == 201
        for ws in (customer, store):
            events = await recv_events(ws, 2)
            assert [e["kind"] for e in events] == ["payment.status", "receipt.issued"]
            issued = events[1]
            assert issued["status"] == "ISSUED" and issued["order_id"] == order["id"]
            assert issued["receipt"]["label"] == "store-1-000001"
            assert issued["receipt"]["kind"] == "sale" and issued["receipt"]["amount"] == 3000
            assert issued["order"]["payment_summary"]["outstanding"] == 0
            msgspec.convert(issued, schemas.StreamEvent, strict=False)


async def _issues_receipt(session: AsyncSession, db: Database) -> bool:
    """Whether this transaction has inserted a receipt: it sees its own uncommitted rows,
    another connection does not."""
    count = text("SELECT count(*) FROM receipts")
    mine = int((await session.execute(count)).scalar_one())
    async with db.read() as other:
        committed = int((await other.execute(count)).scalar_one())
    return mine > committed


async def _events(service: Service, order_id: str, kind: str | None = None) -> list[Event]:
    statement = select(Event).where(Event.order_id == order_id).order_by(Event.id)
    if kind is not None:
        statement = statement.where(Event.kind == kind)
    async with service.db.read() as session:
        return list((await session.execute(statement)).scalars())


async def _streams_of(service: Service, event_id: int) -> list[str]:
    async with service.db.read() as session:
        rows = await session.execute(
            select(StreamEvent.stream).where(StreamEvent.event_id == event_id)
        )
        return sorted(rows.scalars())


async def _one(service: Service, order_id: str, number: int) -> bytes:
    r = await service.http.get(f"/api/orders/{order_id}/receipts/{number}", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    assert orjson.loads(r.content)["number"] == number
    return r.content
