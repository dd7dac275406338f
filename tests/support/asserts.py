"""Assertions shared by the API tests: the one error shape, and "nothing was written"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import func, select

from orders.models import Event, Order

if TYPE_CHECKING:
    from tests.conftest import Service


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is ``status`` with the one JSON error shape; its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    return dict(error)


async def counts(service: Service) -> tuple[int, int]:
    """(orders, events) rows in the database: a bad call must leave both unchanged."""
    async with service.db.read() as session:
        orders = (await session.execute(select(func.count()).select_from(Order))).scalar_one()
        events = (await session.execute(select(func.count()).select_from(Event))).scalar_one()
    return int(orders), int(events)
