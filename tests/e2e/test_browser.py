"""The demo pages in a real browser: Chromium (Debian's /usr/bin/chromium) driven by Playwright.

Each test runs ``python -m server`` as a subprocess on the embedded default (a SQLite file in
tmp_path, the in-memory broker, demo tokens on) and drives the customer and POS pages against it.
Screenshots of each page go to $E2E_SCREENSHOT_DIR (default /tmp) for a human to look at.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from playwright.async_api import (
    Browser,
    Locator,
    Page,
    Request,
    Route,
    async_playwright,
    expect,
)

from channels import create_broker
from orders.db import Database
from orders.metrics import Metrics
from orders.workflow import OrderStatus
from orders.writes import Actor, Publisher, change_order_status
from server.auth import Principal, Role
from tests.support.ci import IN_CI
from tests.support.servers import Running, free_port, serve_subprocess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("E2E_SCREENSHOT_DIR", "/tmp"))
WAIT_MS = 15_000
STORE = "store-1"

LABELS = {
    "CONFIRMED": "Confirmed",
    "PREPARING": "Preparing",
    "READY": "Ready",
    "DELIVERED": "Delivered",
}


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium (never a downloaded build); missing means fail under CI, else skip."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (scripts/services installs it from Debian)"
        if IN_CI:
            pytest.fail(f"{message}; under CI a missing browser is a failure", pytrace=False)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """A headless Chromium for one test."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    """The embedded default with demo tokens; nothing from the outer environment leaks in."""
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/demo.db",
        "DEMO_TOKENS": "true",
        "REDIS_URL": "",
        "JWT_SECRET": "",
        "JWT_PUBLIC_KEY": "",
        "ALLOWED_ORIGINS": "",
        "LOG_LEVEL": "WARNING",
        "GRACEFUL_SHUTDOWN_TIMEOUT": "3",
    }


@pytest.fixture
async def server(server_env: dict[str, str]) -> AsyncIterator[Running]:
    """``python -m server`` in a subprocess, stopped (SIGTERM) after the test."""
    async with serve_subprocess(server_env) as running:
        yield running


# -- page helpers --------------------------------------------------------------------------------


class PageErrors:
    """Uncaught exceptions of the pages under test (there must be none)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page, name: str) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"{name}: {exc}"))

    def assert_none(self) -> None:
        assert self.errors == []


async def open_page(
    browser: Browser, errors: PageErrors, name: str, width: int = 1280, height: int = 900
) -> Page:
    """A page in a browser context of its own (its own localStorage: another device)."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    errors.watch(page, name)
    return page


async def customer_signs_in(page: Page, base: str, name: str) -> None:
    await page.goto(f"{base}/demo/customer.html")
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    await expect(page.locator("#who-name")).to_have_text(name)


async def customer_places_cash_order(page: Page) -> str:
    await page.get_by_label("Store", exact=True).select_option(STORE)
    await page.get_by_label("Masala dosa").fill("2")
    await page.get_by_label("Filter coffee").fill("1")
    await page.get_by_label("Cash").check()
    await expect(page.locator("#order-total")).to_have_text("₹280.00")
    await page.get_by_role("button", name="Place order").click()
    tracker = page.locator("#tracker")
    await expect(tracker).to_have_attribute("data-status", "CONFIRMED")
    order_id = await tracker.get_attribute("data-order-id")
    assert order_id is not None and order_id.startswith("ord_")
    return order_id


async def pos_signs_in(page: Page, base: str, terminal: str = "till-1") -> None:
    await page.goto(f"{base}/demo/pos.html")
    await page.get_by_label("Store", exact=True).select_option(STORE)
    await page.get_by_label("Terminal name").fill(terminal)
    await page.get_by_role("button", name="Open the board").click()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")


async def expect_customer_sees(page: Page, status: str) -> None:
    await expect(page.locator("#tracker")).to_have_attribute("data-status", status)
    await expect(page.locator("#tracker-status")).to_have_text(LABELS[status])


async def timeline_statuses(page: Page) -> list[str | None]:
    items = await page.locator("#timeline > li").all()
    return [await item.get_attribute("data-status") for item in items]


async def received_seqs(page: Page) -> list[int]:
    seqs: list[int] = await page.evaluate("() => window.orderstatusDemo.received")
    return seqs


def short_id(order_id: str) -> str:
    """The pages' short form of an order id (ui.js shortId)."""
    return "#" + order_id.removeprefix("ord_")[:6].upper()


async def screenshot(page: Page, name: str) -> None:
    # Playwright creates the directory if needed.
    await page.screenshot(path=str(SCREENSHOTS / f"orderstatus-{name}.png"), full_page=True)


async def demo_token(http: httpx.AsyncClient, sub: str, **claims: str) -> str:
    response = await http.post("/demo/token", json={"sub": sub, **claims})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def cash_order_over_rest(
    http: httpx.AsyncClient,
    customer: str,
    *,
    sku: str,
    name: str,
    quantity: int,
    unit_price: int,
) -> str:
    """A cash order of one line placed by ``customer`` over REST; its id."""
    token = await demo_token(http, customer)
    created = await http.post(
        "/api/orders",
        json={
            "store_id": STORE,
            "currency": "INR",
            "payment_method": "cash",
            "items": [{"sku": sku, "name": name, "quantity": quantity, "unit_price": unit_price}],
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text
    order_id: str = created.json()["order"]["id"]
    return order_id


async def pos_moves(http: httpx.AsyncClient, order_id: str, status: str, terminal: str) -> None:
    """Another terminal of the store moves the order over REST."""
    token = await demo_token(http, terminal, role="pos", store_id=STORE)
    response = await http.post(
        f"/api/pos/orders/{order_id}/status",
        json={"status": status},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text


async def write_while_the_server_is_down(
    database_url: str, order_id: str, statuses: Sequence[OrderStatus]
) -> None:
    """Move an order through the one write path, with the web process stopped.

    Stands in for whatever keeps writing while one web process restarts (another instance, a
    reconciler): the events land in the durable log, and nobody is connected to hear them.
    """
    db = Database(database_url, pool_size=1)
    broker = create_broker(None)
    await broker.connect()
    metrics = Metrics()
    publisher = Publisher(db, broker, prefix="orderstatus:", metrics=metrics)
    terminal = Principal(sub="till-2", role=Role.POS, store_id=STORE, expires_at=time.time() + 60)
    try:
        for status in statuses:
            await change_order_status(
                db, publisher, metrics, order_id=order_id, to=status, actor=Actor.of(terminal)
            )
    finally:
        await broker.disconnect()
        await db.dispose()


# -- scenarios -----------------------------------------------------------------------------------


async def test_the_customer_sees_every_pos_move_live_without_reloading(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    customer = await open_page(browser, errors, "customer")
    await customer_signs_in(customer, server.http, "alice")
    await customer.evaluate("() => { window.__sameDocument = true; }")
    order_id = await customer_places_cash_order(customer)

    pos = await open_page(browser, errors, "pos", width=1500)
    await pos_signs_in(pos, server.http)
    card = pos.locator(f'.order-card[data-order-id="{order_id}"]')
    await expect(card).to_have_attribute("data-status", "CONFIRMED")
    await expect(pos.locator('[data-column="CONFIRMED"]').locator(".order-card")).to_have_count(1)

    steps = [
        ("Start preparing", "PREPARING", ["Mark ready", "Cancel"]),
        ("Mark ready", "READY", ["Out for delivery", "Picked up", "Cancel"]),
        ("Picked up", "DELIVERED", []),
    ]
    moves = card.locator(".order-card__actions").get_by_role("button")
    await expect(moves).to_have_text(["Start preparing", "Cancel"])
    for button, status, next_buttons in steps:
        await card.get_by_role("button", name=button).click()
        await expect(card).to_have_attribute("data-status", status)
        await expect(moves).to_have_text(next_buttons)
        await expect_customer_sees(customer, status)
        if status == "PREPARING":
            await screenshot(customer, "customer-preparing")
            await screenshot(pos, "pos-board")

    assert await customer.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    await expect(customer.locator("#timeline > li")).to_have_count(4)
    assert await timeline_statuses(customer) == ["CONFIRMED", "PREPARING", "READY", "DELIVERED"]
    assert await received_seqs(customer) == [1, 2, 3, 4]
    await expect(customer.locator(".step--skipped")).to_have_count(1)  # a pickup: no delivery leg
    row = customer.locator(f'.history__row[data-order-id="{order_id}"]')
    await expect(row).to_have_attribute("data-status", "DELIVERED")
    await expect(pos.locator('[data-column="DONE"]').locator(".order-card")).to_have_count(1)
    await screenshot(customer, "customer-delivered")
    await screenshot(pos, "pos-done")
    errors.assert_none()


async def test_the_customer_page_survives_a_server_restart_and_catches_up_once(
    browser: Browser, server_env: dict[str, str]
) -> None:
    errors = PageErrors()
    port = free_port()
    async with serve_subprocess(server_env, port=port) as first:
        customer = await open_page(browser, errors, "customer")
        await customer_signs_in(customer, first.http, "bob")
        order_id = await customer_places_cash_order(customer)
        assert await received_seqs(customer) == [1]

    # The server is gone (it closed the socket with 1012); the page keeps trying.
    await expect(customer.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    await screenshot(customer, "customer-reconnecting")
    await write_while_the_server_is_down(
        server_env["DATABASE_URL"], order_id, [OrderStatus.PREPARING, OrderStatus.READY]
    )

    async with serve_subprocess(server_env, port=port) as second:
        # Same port, same database, a new process (and a new demo-token secret).
        await expect(customer.locator("#tracker")).to_have_attribute(
            "data-status", "READY", timeout=30_000
        )
        await expect(customer.locator("#conn")).to_have_attribute("data-state", "live")
        assert await received_seqs(customer) == [1, 2, 3]
        await expect(customer.locator("#timeline > li")).to_have_count(3)
        assert await timeline_statuses(customer) == ["CONFIRMED", "PREPARING", "READY"]

        async with httpx.AsyncClient(base_url=second.http, timeout=10) as http:
            await pos_moves(http, order_id, "OUT_FOR_DELIVERY", terminal="till-2")
        await expect(customer.locator("#tracker")).to_have_attribute(
            "data-status", "OUT_FOR_DELIVERY"
        )
        assert await received_seqs(customer) == [1, 2, 3, 4]
        await screenshot(customer, "customer-after-restart")
    errors.assert_none()


async def test_the_pos_board_shows_a_409_plainly_when_another_terminal_got_there_first(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        order_id = await cash_order_over_rest(
            http, "carol", sku="idli", name="Idli sambar", quantity=3, unit_price=8000
        )

        pos = await open_page(browser, errors, "pos", width=1500)
        await pos_signs_in(pos, server.http)
        card = pos.locator(f'.order-card[data-order-id="{order_id}"]')
        await expect(card).to_have_attribute("data-status", "CONFIRMED")

        # This board stops hearing the stream (a stale screen), while another terminal moves on.
        await pos.evaluate("() => window.posBoard.client.stop()")
        await pos_moves(http, order_id, "PREPARING", terminal="till-2")

    await card.get_by_role("button", name="Start preparing").click()
    banner = pos.get_by_role("alert")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("could not be moved to Preparing")
    await expect(banner).to_contain_text("409 invalid_transition")
    await expect(banner).to_contain_text("It is Preparing now")
    await expect(banner).to_contain_text("Allowed next: Ready, Cancelled.")
    # The card catches up with the truth and offers only what is allowed now.
    await expect(card).to_have_attribute("data-status", "PREPARING")
    await expect(card.locator(".order-card__actions").get_by_role("button")).to_have_text(
        ["Mark ready", "Cancel"]
    )
    await screenshot(pos, "pos-409")
    errors.assert_none()


# -- paying online in the sandbox ----------------------------------------------------------------


async def customer_places_online_order(page: Page) -> tuple[str, Page]:
    """Place an online order; the sandbox's payment page opens in a window of its own."""
    await page.get_by_label("Store", exact=True).select_option(STORE)
    await page.get_by_label("Filter coffee").fill("2")
    await page.get_by_label("Online").check()
    async with page.expect_popup() as popup_info:
        await page.get_by_role("button", name="Place order").click()
    payment_page = await popup_info.value
    tracker = page.locator("#tracker")
    await expect(tracker).to_have_attribute("data-status", "PENDING_PAYMENT")
    order_id = await tracker.get_attribute("data-order-id")
    assert order_id is not None and order_id.startswith("ord_")
    await expect(payment_page.get_by_role("heading", name="Sandbox gateway")).to_be_visible()
    return order_id, payment_page


async def test_paying_online_in_the_sandbox_confirms_the_order_live_on_both_pages(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    customer = await open_page(browser, errors, "customer")
    await customer_signs_in(customer, server.http, "dana")
    await customer.evaluate("() => { window.__sameDocument = true; }")
    pos = await open_page(browser, errors, "pos", width=1500)
    await pos_signs_in(pos, server.http)

    order_id, payment_page = await customer_places_online_order(customer)
    card = pos.locator(f'.order-card[data-order-id="{order_id}"]')
    await expect(card).to_have_attribute("data-status", "PENDING_PAYMENT")
    await expect(
        pos.locator('[data-column="PENDING_PAYMENT"]').locator(".order-card")
    ).to_have_count(1)
    await expect(customer.locator("#payment-panel")).to_contain_text("Waiting for the payment")
    await screenshot(customer, "customer-awaiting-payment")

    await payment_page.get_by_role("button", name="Approve").click()
    await expect(payment_page.locator("#status")).to_have_text("succeeded")

    # The webhook (or the reconciler) settles it; both pages follow without a reload.
    await expect_customer_sees(customer, "CONFIRMED")
    await expect(customer.locator("#payment-panel")).to_have_count(0)
    await expect(card).to_have_attribute("data-status", "CONFIRMED")
    await expect(pos.locator('[data-column="CONFIRMED"]').locator(".order-card")).to_have_count(1)
    await expect(
        pos.locator('[data-column="PENDING_PAYMENT"]').locator(".order-card")
    ).to_have_count(0)
    timeline = customer.locator("#timeline")
    await expect(timeline).to_contain_text("Payment received")
    assert await customer.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    await screenshot(customer, "customer-paid")
    await screenshot(pos, "pos-paid")
    errors.assert_none()


async def test_a_declined_payment_says_so_and_a_retry_pays_the_order(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    customer = await open_page(browser, errors, "customer")
    await customer_signs_in(customer, server.http, "erin")
    order_id, payment_page = await customer_places_online_order(customer)

    await payment_page.get_by_role("button", name="Decline").click()
    await expect(payment_page.locator("#status")).to_have_text("declined")
    panel = customer.locator("#payment-panel")
    await expect(panel).to_have_attribute("data-payment", "FAILED")
    await expect(panel).to_contain_text("Payment failed — try again.")
    await expect(customer.locator("#tracker")).to_have_attribute("data-status", "PENDING_PAYMENT")
    await screenshot(customer, "customer-payment-failed")

    # The retry reuses the payment window, now on the new attempt's page.
    first_attempt = payment_page.url
    await panel.get_by_role("button", name="Try again").click()
    await expect(payment_page).not_to_have_url(first_attempt)
    await payment_page.get_by_role("button", name="Approve").click()
    await expect(payment_page.locator("#status")).to_have_text("succeeded")
    await expect_customer_sees(customer, "CONFIRMED")

    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        token = await demo_token(http, "erin")
        body = (
            await http.get(f"/api/orders/{order_id}", headers={"Authorization": f"Bearer {token}"})
        ).json()
    assert [p["status"] for p in body["payments"]] == ["FAILED", "COMPLETED"]
    errors.assert_none()


# -- the money side: a cash payment and refunds on the POS board -----------------------------------


class Posts:
    """The POST requests a page sent (path and Idempotency-Key), to prove what was (not) sent."""

    def __init__(self, page: Page) -> None:
        self.sent: list[tuple[str, str | None]] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        if request.method == "POST" and "/api/" in request.url:
            path = request.url.split("://", 1)[1].split("/", 1)[1]
            self.sent.append(("/" + path, request.headers.get("idempotency-key")))

    def to(self, suffix: str) -> list[tuple[str, str | None]]:
        return [sent for sent in self.sent if sent[0].endswith(suffix)]


async def expect_customer_money(page: Page, paid: str, refunded: str, outstanding: str) -> None:
    await expect(page.locator("#money-paid")).to_have_text(paid)
    await expect(page.locator("#money-refunded")).to_have_text(refunded)
    await expect(page.locator("#money-outstanding")).to_have_text(outstanding)


async def expect_card_money(card: Locator, paid: int, refunded: int, outstanding: int) -> None:
    money = card.locator(".order-card__money")
    await expect(money).to_have_attribute("data-paid", str(paid))
    await expect(money).to_have_attribute("data-refunded", str(refunded))
    await expect(money).to_have_attribute("data-outstanding", str(outstanding))


async def record_cash_over_rest(http: httpx.AsyncClient, order_id: str, amount: int) -> None:
    """Another terminal of the store takes the cash (the board under test only hears of it)."""
    token = await demo_token(http, "till-2", role="pos", store_id=STORE)
    response = await http.post(
        f"/api/pos/orders/{order_id}/payments",
        json={"method": "cash", "amount": amount},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text


async def summary_over_rest(http: httpx.AsyncClient, order_id: str) -> dict[str, object]:
    token = await demo_token(http, "till-2", role="pos", store_id=STORE)
    response = await http.get(
        f"/api/orders/{order_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    summary: dict[str, object] = response.json()["order"]["payment_summary"]
    return summary


async def test_a_cash_payment_recorded_on_the_pos_board_settles_the_customer_page_live(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    customer = await open_page(browser, errors, "customer")
    await customer_signs_in(customer, server.http, "frank")
    await customer.evaluate("() => { window.__sameDocument = true; }")
    order_id = await customer_places_cash_order(customer)
    # A cash order is confirmed at once, and owes its amount until the store takes the money.
    await expect_customer_money(customer, "₹0.00", "₹0.00", "₹280.00")

    pos = await open_page(browser, errors, "pos", width=1500)
    posts = Posts(pos)
    await pos_signs_in(pos, server.http)
    card = pos.locator(f'.order-card[data-order-id="{order_id}"]')
    await expect_card_money(card, paid=0, refunded=0, outstanding=28000)
    await expect(card.get_by_role("button", name="Refund")).to_have_count(0)
    await screenshot(pos, "pos-money")

    await card.get_by_role("button", name="Record payment").click()
    dialog = pos.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Method")).to_have_value("cash")
    await expect(dialog.get_by_label("Amount (INR)")).to_have_value("280.00")  # outstanding
    await dialog.get_by_label("Reference").fill("drawer 2")
    await dialog.get_by_role("button", name="Review payment").click()
    await expect(dialog.locator("#money-question")).to_have_text(
        f"Record ₹280.00 of ₹280.00 outstanding, paid by cash, for order {short_id(order_id)}?"
    )
    await expect(dialog.locator("#money-detail")).to_contain_text("fully paid")
    await screenshot(pos, "pos-record-payment-confirm")
    assert posts.to("/payments") == [], "nothing is sent before the confirmation"

    await dialog.get_by_role("button", name="Record ₹280.00").click()
    await expect(dialog).to_be_hidden()
    await expect_card_money(card, paid=28000, refunded=0, outstanding=0)
    await expect(card.get_by_role("button", name="Record payment")).to_have_count(0)
    await expect(card.get_by_role("button", name="Refund")).to_be_visible()
    sent = posts.to(f"/api/pos/orders/{order_id}/payments")
    assert len(sent) == 1 and sent[0][1], f"one POST with an Idempotency-Key: {sent}"

    # The customer's page follows without a reload: paid, nothing owed, still CONFIRMED.
    await expect_customer_money(customer, "₹280.00", "₹0.00", "₹0.00")
    await expect_customer_sees(customer, "CONFIRMED")
    await expect(customer.locator("#timeline")).to_contain_text("Payment received")
    assert await customer.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    await screenshot(customer, "customer-cash-paid")
    await screenshot(pos, "pos-cash-paid")
    errors.assert_none()


async def test_a_partial_refund_on_the_pos_board_shows_the_new_totals_on_the_customer_page_live(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    customer = await open_page(browser, errors, "customer")
    await customer_signs_in(customer, server.http, "gina")
    await customer.evaluate("() => { window.__sameDocument = true; }")
    order_id = await customer_places_cash_order(customer)
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        await record_cash_over_rest(http, order_id, 28000)
        # Another customer's cash order, still owed: the board shows both money buttons.
        owing_id = await cash_order_over_rest(
            http, "hugo", sku="wrap", name="Paneer tikka wrap", quantity=1, unit_price=16000
        )
    await expect_customer_money(customer, "₹280.00", "₹0.00", "₹0.00")

    pos = await open_page(browser, errors, "pos", width=1500)
    posts = Posts(pos)
    await pos_signs_in(pos, server.http)
    card = pos.locator(f'.order-card[data-order-id="{order_id}"]')
    await expect_card_money(card, paid=28000, refunded=0, outstanding=0)
    owing_card = pos.locator(f'.order-card[data-order-id="{owing_id}"]')
    await expect_card_money(owing_card, paid=0, refunded=0, outstanding=16000)
    await expect(owing_card.get_by_role("button", name="Record payment")).to_be_visible()
    await screenshot(pos, "pos-money-buttons")  # docs/screenshots/pos-money.png

    await card.get_by_role("button", name="Refund").click()
    dialog = pos.get_by_role("dialog")
    await expect(dialog.get_by_label("Amount (INR)")).to_have_value("280.00")  # full by default
    # A reason is required: without one the dialog says so and goes nowhere.
    await dialog.get_by_role("button", name="Review refund").click()
    await expect(dialog.locator("#money-error")).to_contain_text("Say why")
    # Too many decimals for rupees is refused before anything is sent.
    await dialog.get_by_label("Amount (INR)").fill("40.005")
    await dialog.get_by_label("Reason").fill("Cold coffee")
    await dialog.get_by_role("button", name="Review refund").click()
    await expect(dialog.locator("#money-amount-error")).to_have_text(
        "INR has 2 decimal places at most"
    )
    await dialog.get_by_label("Amount (INR)").fill("40")
    await dialog.get_by_role("button", name="Review refund").click()
    await expect(dialog.locator("#money-question")).to_have_text(
        "Refund ₹40.00 of ₹280.00 to cash?"
    )
    await expect(dialog.locator("#money-detail")).to_contain_text("Hand the money back")
    await screenshot(pos, "pos-refund-confirm")
    await dialog.get_by_role("button", name="Refund ₹40.00").click()
    await expect(dialog).to_be_hidden()
    await expect_card_money(card, paid=28000, refunded=4000, outstanding=0)

    refunds = posts.to(f"/api/orders/{order_id}/refunds")
    assert len(refunds) == 1 and refunds[0][1], refunds
    await expect_customer_money(customer, "₹280.00", "₹40.00", "₹0.00")
    timeline = customer.locator("#timeline")
    await expect(timeline).to_contain_text("Partly refunded")
    # The refund's entry in rupees with its reason (the server's note counts in paise).
    refund_entry = timeline.locator('li[data-status="SUCCEEDED"]')
    await expect(refund_entry).to_contain_text("Refunded")
    await expect(refund_entry).to_contain_text("₹40.00 · “Cold coffee”")
    assert await customer.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        summary = await summary_over_rest(http, order_id)
    assert (summary["paid"], summary["refunded"], summary["outstanding"]) == (28000, 4000, 0)
    await screenshot(customer, "customer-partly-refunded")
    errors.assert_none()


async def test_the_money_dialog_can_be_cancelled_and_shows_the_servers_refusal(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        order_id = await cash_order_over_rest(
            http, "hana", sku="lassi", name="Mango lassi", quantity=2, unit_price=9000
        )
        await record_cash_over_rest(http, order_id, 18000)

        pos = await open_page(browser, errors, "pos", width=1500)
        posts = Posts(pos)
        await pos_signs_in(pos, server.http)
        card = pos.locator(f'.order-card[data-order-id="{order_id}"]')
        await expect_card_money(card, paid=18000, refunded=0, outstanding=0)
        dialog = pos.get_by_role("dialog")

        # Cancelled at the confirmation: the question was asked, nothing was sent.
        await card.get_by_role("button", name="Refund").click()
        await dialog.get_by_label("Reason").fill("Changed their mind")
        await dialog.get_by_role("button", name="Review refund").click()
        await expect(dialog.locator("#money-question")).to_have_text(
            "Refund ₹180.00 of ₹180.00 to cash?"
        )
        await dialog.get_by_role("button", name="Cancel").click()
        await expect(dialog).to_be_hidden()
        # Focus goes back to the button that opened it.
        await expect(card.get_by_role("button", name="Refund")).to_be_focused()
        # Escape at the form closes it too.
        await card.get_by_role("button", name="Refund").click()
        await expect(dialog).to_be_visible()
        await pos.keyboard.press("Escape")
        await expect(dialog).to_be_hidden()
        assert posts.to("/refunds") == []
        assert (await summary_over_rest(http, order_id))["refunded"] == 0
        await expect_card_money(card, paid=18000, refunded=0, outstanding=0)

        # The race: the question is on screen of a board that stopped hearing the stream, and
        # another terminal refunds it all. The confirmation is refused, and the dialog says why,
        # from the JSON error body.
        await pos.evaluate("() => window.posBoard.client.stop()")
        await card.get_by_role("button", name="Refund").click()
        await dialog.get_by_label("Reason").fill("Spilled")
        await dialog.get_by_role("button", name="Review refund").click()
        await expect(dialog.locator("#money-question")).to_have_text(
            "Refund ₹180.00 of ₹180.00 to cash?"
        )
        till_2 = await demo_token(http, "till-2", role="pos", store_id=STORE)
        refunded = await http.post(
            f"/api/orders/{order_id}/refunds",
            json={"reason": "Spilled"},
            headers={"Authorization": f"Bearer {till_2}"},
        )
        assert refunded.status_code == 201, refunded.text

    await dialog.get_by_role("button", name="Refund ₹180.00").click()
    error = dialog.locator("#money-error")
    await expect(error).to_contain_text("409 nothing_to_refund")
    await expect(error).to_contain_text("Everything paid has been refunded")
    await screenshot(pos, "pos-refund-refused")
    # The board read the order again: the card now tells the truth.
    await expect_card_money(card, paid=18000, refunded=18000, outstanding=0)
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(card.get_by_role("button", name="Refund")).to_have_count(0)
    assert len(posts.to("/refunds")) == 1
    errors.assert_none()


async def test_a_refund_of_an_online_payment_goes_to_the_gateway_and_the_customer_sees_it_settle(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    customer = await open_page(browser, errors, "customer")
    await customer_signs_in(customer, server.http, "jack")
    order_id, payment_page = await customer_places_online_order(customer)
    await payment_page.get_by_role("button", name="Approve").click()
    await expect_customer_sees(customer, "CONFIRMED")
    await expect_customer_money(customer, "₹80.00", "₹0.00", "₹0.00")

    pos = await open_page(browser, errors, "pos", width=1500)
    await pos_signs_in(pos, server.http)
    card = pos.locator(f'.order-card[data-order-id="{order_id}"]')
    await expect_card_money(card, paid=8000, refunded=0, outstanding=0)
    await card.get_by_role("button", name="Refund").click()
    dialog = pos.get_by_role("dialog")
    await dialog.get_by_label("Amount (INR)").fill("12.5")
    await dialog.get_by_label("Reason").fill("One coffee was cold")
    await dialog.get_by_role("button", name="Review refund").click()
    await expect(dialog.locator("#money-question")).to_have_text(
        "Refund ₹12.50 of ₹80.00 to the customer's sandbox payment?"
    )
    await expect(dialog.locator("#money-detail")).to_contain_text("The gateway is asked")
    await dialog.get_by_role("button", name="Refund ₹12.50").click()
    await expect(dialog).to_be_hidden()

    # Refunded once the sandbox says so (its answer, a webhook or the reconciler), on both pages.
    await expect_card_money(card, paid=8000, refunded=1250, outstanding=0)
    await expect_customer_money(customer, "₹80.00", "₹12.50", "₹0.00")
    refund_entry = customer.locator('#timeline li[data-status="SUCCEEDED"]')
    await expect(refund_entry).to_contain_text("₹12.50 · “One coffee was cold”")
    errors.assert_none()


async def test_a_lost_answer_to_a_recorded_payment_is_retried_with_its_key_and_pays_once(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        order_id = await cash_order_over_rest(
            http, "ivan", sku="idli", name="Idli sambar", quantity=1, unit_price=8000
        )

        pos = await open_page(browser, errors, "pos", width=1500)
        posts = Posts(pos)
        replayed: list[str | None] = []

        async def lose_the_first_answer(route: Route) -> None:
            # The server runs the request; the terminal never hears back (a flaky network).
            answer = await route.fetch()
            replayed.append(answer.headers.get("idempotent-replayed"))
            if len(replayed) == 1:
                await route.abort("connectionreset")
            else:
                await route.fulfill(response=answer)

        await pos.route(f"**/api/pos/orders/{order_id}/payments", lose_the_first_answer)
        await pos_signs_in(pos, server.http)
        card = pos.locator(f'.order-card[data-order-id="{order_id}"]')
        await card.get_by_role("button", name="Record payment").click()
        dialog = pos.get_by_role("dialog")
        await dialog.get_by_role("button", name="Review payment").click()
        await dialog.get_by_role("button", name="Record ₹80.00").click()
        await expect(dialog).to_be_hidden()
        await expect_card_money(card, paid=8000, refunded=0, outstanding=0)

        sent = posts.to(f"/api/pos/orders/{order_id}/payments")
        assert len(sent) == 2 and sent[0][1] and sent[0][1] == sent[1][1], sent
        assert replayed == [None, "true"], "the retry got the stored answer"
        till_2 = await demo_token(http, "till-2", role="pos", store_id=STORE)
        body = (
            await http.get(f"/api/orders/{order_id}", headers={"Authorization": f"Bearer {till_2}"})
        ).json()
    assert [(p["gateway"], p["amount"]) for p in body["payments"]] == [("manual", 8000)]
    errors.assert_none()


async def test_receipts_appear_live_on_the_customer_page_and_open_as_a_printable_page(
    browser: Browser, server: Running
) -> None:
    errors = PageErrors()
    customer = await open_page(browser, errors, "customer")
    await customer_signs_in(customer, server.http, "ines")
    order_id = await customer_places_cash_order(customer)
    receipts = customer.locator("#receipts > li")
    await expect(receipts).to_have_count(0)

    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        await record_cash_over_rest(http, order_id, 28000)
        # Fully paid: a sale receipt, announced on the stream (receipt.issued), no reload.
        await expect(receipts).to_have_count(1)
        await expect(receipts.first).to_have_attribute("data-kind", "sale")
        await expect(receipts.first).to_contain_text("sale ₹280.00")
        till_2 = await demo_token(http, "till-2", role="pos", store_id=STORE)
        refunded = await http.post(
            f"/api/orders/{order_id}/refunds",
            json={"amount": 4000, "reason": "Cold coffee"},
            headers={"Authorization": f"Bearer {till_2}"},
        )
        assert refunded.status_code == 201, refunded.text
    await expect(receipts).to_have_count(2)
    await expect(receipts.nth(1)).to_have_attribute("data-kind", "refund")
    await expect(receipts.nth(1)).to_contain_text("refund ₹40.00")
    await expect(customer.locator("#timeline")).to_contain_text("Receipt issued")
    await screenshot(customer, "customer-receipts")

    # The link fetches the page with the bearer token and shows it from a blob URL.
    link = receipts.first.get_by_role("link")
    name = (await link.inner_text()).removeprefix("Receipt ")
    async with customer.expect_popup() as popup_info:
        await link.click()
    receipt_page = await popup_info.value
    await expect(receipt_page).to_have_url(re.compile(r"^blob:"))
    await expect(receipt_page.locator("body")).to_contain_text(name)
    await expect(receipt_page.locator("body")).to_contain_text("Masala dosa")
    await screenshot(receipt_page, "receipt")
    errors.assert_none()
