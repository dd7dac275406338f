"""An order whose stored status this code does not know is refused with 409, never a 500."""

from __future__ import annotations

from sqlalchemy import update

from orders.models import Order
from tests.conftest import Service
from tests.support.asserts import assert_error, counts
from tests.support.clients import auth, order_body, token

POS = token("till", role="pos", store_id="store-1")


async def order_with_status(service: Service, customer: str, status: str) -> str:
    """An order created through the API, then given ``status`` behind the service's back."""
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token(customer)))
    assert r.status_code == 201, r.text
    order_id = str(r.json()["order"]["id"])
    async with service.db.transaction() as session:
        await session.execute(update(Order).where(Order.id == order_id).values(status=status))
    return order_id


async def test_a_pos_move_from_an_unknown_status_is_409_unknown_status_and_writes_nothing(
    service: Service,
) -> None:
    order_id = await order_with_status(service, "gus", "ON_THE_MOON")
    before = await counts(service)
    r = await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": "PREPARING"}, headers=auth(POS)
    )
    error = assert_error(r, 409, "unknown_status")
    assert error["status"] == "ON_THE_MOON" and error["allowed"] == []
    assert await counts(service) == before
    # The order is still readable as it is.
    got = await service.http.get(f"/api/orders/{order_id}", headers=auth(POS))
    assert got.status_code == 200 and got.json()["order"]["status"] == "ON_THE_MOON"


async def test_a_customer_cancel_from_an_unknown_status_is_409_unknown_status(
    service: Service,
) -> None:
    order_id = await order_with_status(service, "hal", "LEGACY_HOLD")
    r = await service.http.post(f"/api/orders/{order_id}/cancel", headers=auth(token("hal")))
    assert_error(r, 409, "unknown_status")
