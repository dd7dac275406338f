"""The database drops every connection (a restart, a failover): no 500, nothing half-written."""

from __future__ import annotations

import asyncpg
import pytest
from websockets.asyncio.client import connect

from tests.conftest import PG_DSN, Backend, StartService
from tests.support.asserts import counts
from tests.support.clients import auth, order_body, recv_events, recv_json, token


@pytest.fixture
async def backend(pg_backend: Backend) -> Backend:
    """PostgreSQL only: SQLite has no connections to drop."""
    return pg_backend


async def drop_every_connection(database_url: str) -> int:
    """Terminate every backend connected to the test's database; how many."""
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_DSN)
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
    finally:
        await admin.close()
    return len(rows)


async def test_requests_after_the_database_drops_its_connections_get_503_or_succeed_never_500(
    start_service: StartService,
) -> None:
    service = await start_service()
    alice = token("ada")
    async with connect(f"{service.ws_url}?token={alice}") as ws:
        await recv_json(ws)
        first = await service.http.post("/api/orders", json=order_body(), headers=auth(alice))
        assert first.status_code == 201
        await recv_events(ws, 1)
        assert await drop_every_connection(service.settings.database_url) > 0
        statuses = []
        for _ in range(4):
            r = await service.http.post("/api/orders", json=order_body(), headers=auth(alice))
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "database_unavailable"
                assert r.headers["retry-after"] == "1"
        assert set(statuses) <= {201, 503} and statuses[-1] == 201, statuses
        created = statuses.count(201)
        # Every acknowledged order reached the live subscriber; nothing else was written.
        events = await recv_events(ws, created)
        assert [e["seq"] for e in events] == list(range(2, 2 + created))
    assert await counts(service) == (1 + created, 1 + created)
