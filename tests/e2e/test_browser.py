"""The demo pages in a real browser: Chromium (Debian's /usr/bin/chromium) driven by Playwright.

Each test runs ``python -m server`` as a subprocess on the embedded default (a SQLite file in
tmp_path, the in-memory broker, demo tokens on) and drives the customer and POS pages against it.
Screenshots of each page go to $E2E_SCREENSHOT_DIR (default /tmp) for a human to look at.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

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


async def screenshot(page: Page, name: str) -> None:
    # Playwright creates the directory if needed.
    await page.screenshot(path=str(SCREENSHOTS / f"orderstatus-{name}.png"), full_page=True)


async def demo_token(http: httpx.AsyncClient, sub: str, **claims: str) -> str:
    response = await http.post("/demo/token", json={"sub": sub, **claims})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


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
    await expect(card.get_by_role("button")).to_have_text(["Start preparing", "Cancel"])
    for button, status, next_buttons in steps:
        await card.get_by_role("button", name=button).click()
        await expect(card).to_have_attribute("data-status", status)
        await expect(card.get_by_role("button")).to_have_text(next_buttons)
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
        token = await demo_token(http, "carol")
        created = await http.post(
            "/api/orders",
            json={
                "store_id": STORE,
                "currency": "INR",
                "payment_method": "cash",
                "items": [
                    {"sku": "idli", "name": "Idli sambar", "quantity": 3, "unit_price": 8000}
                ],
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201, created.text
        order_id: str = created.json()["order"]["id"]

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
    await expect(card.get_by_role("button")).to_have_text(["Mark ready", "Cancel"])
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
