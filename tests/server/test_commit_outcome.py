"""A connection lost during COMMIT is 503 ``commit_outcome_unknown``, not "nothing was changed".

The server cannot know whether PostgreSQL committed before the connection went, so it must not
tell the client that a retry is safe. The hook kills the session's own backend at the last
instant before COMMIT, which is exactly what the server sees when the connection dies during it.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from orders.hooks import Hooks
from orders.models import Event
from tests.conftest import PG_DSN, Backend, Service, StartService
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body, token

POS = token("till-2", role="pos", store_id="store-1")


@pytest.fixture
async def backend(pg_backend: Backend) -> Backend:
    """PostgreSQL only: the connection to kill is a PostgreSQL backend."""
    return pg_backend


class KillBeforeCommit(Hooks):
    """When armed, terminates the write session's backend just before its COMMIT, once."""

    def __init__(self) -> None:
        self.armed = False
        self.killed: list[int] = []

    async def before_commit(self, session: AsyncSession) -> None:
        if not self.armed:
            return
        self.armed = False
        pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        admin = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            async with asyncio.timeout(5):
                while await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
                ):
                    await asyncio.sleep(0.01)
        finally:
            await admin.close()
        self.killed.append(pid)


async def all_marked(service: Service) -> None:
    """Wait until the publisher has marked every event, so no background write is due."""
    async with asyncio.timeout(5):
        while True:
            async with service.db.read() as session:
                left = await session.scalar(
                    select(func.count()).select_from(Event).where(Event.published_at.is_(None))
                )
            if not left:
                return
            await asyncio.sleep(0.02)


async def test_a_connection_lost_during_commit_is_503_commit_outcome_unknown(
    start_service: StartService,
) -> None:
    hooks = KillBeforeCommit()
    service = await start_service(hooks=hooks)
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token("wyn")))
    assert r.status_code == 201, r.text
    order_id = r.json()["order"]["id"]
    await all_marked(service)

    hooks.armed = True
    r = await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": "PREPARING"}, headers=auth(POS)
    )
    error = assert_error(r, 503, "commit_outcome_unknown")
    assert "may or may not have been applied" in error["message"]
    assert r.headers["Retry-After"] == "1"
    assert len(hooks.killed) == 1

    # Here the backend died before COMMIT reached it, so the client's check finds no change,
    # and the retry it then makes is applied once; the server keeps serving on a new connection.
    got = await service.http.get(f"/api/orders/{order_id}", headers=auth(POS))
    assert got.status_code == 200 and got.json()["order"]["status"] == "CONFIRMED"
    r = await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": "PREPARING"}, headers=auth(POS)
    )
    assert r.status_code == 200, r.text
