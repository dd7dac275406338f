"""Redis stops delivering: connected clients keep receiving through database polling."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from websockets.asyncio.client import connect

from tests.channels.helpers import RedisServer
from tests.conftest import Backend, StartService
from tests.support.clients import auth, expect_silence, order_body, recv_events, recv_json, token

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 30


@pytest.fixture
async def backend(pg_backend: Backend, private_redis: RedisServer) -> Backend:
    """PostgreSQL plus a Redis of this test's own, which it stops and starts."""
    return replace(pg_backend, redis_url=private_redis.url)


async def test_with_redis_down_for_30s_subscribers_receive_every_event_and_push_resumes_after(
    start_service: StartService, private_redis: RedisServer
) -> None:
    service = await start_service(relay=True, relay_grace=0.5, hub_poll_interval=1.0)
    customer = token("quinn")
    pos = token("pos-1", role="pos", store_id="store-1")
    async with (
        connect(f"{service.ws_url}?token={customer}") as ws,
        connect(f"{service.ws_url}?token={pos}") as store_ws,
    ):
        await recv_json(ws)
        await recv_json(store_ws)
        r = await service.http.post("/api/orders", json=order_body(), headers=auth(customer))
        assert r.status_code == 201
        received = await recv_events(ws, 1)
        store_received = await recv_events(store_ws, 1)
        assert (await service.http.get("/readyz")).status_code == 200

        await private_redis.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        written = 1
        saw_not_ready = False
        while loop.time() - started < OUTAGE_SECONDS:
            r = await service.http.post("/api/orders", json=order_body(), headers=auth(customer))
            assert r.status_code == 201, r.text  # writes never depend on the broker
            written += 1
            # Every event arrives while Redis is down: polled from the database.
            received += await recv_events(ws, 1, timeout=10)
            store_received += await recv_events(store_ws, 1, timeout=10)
            if (await service.http.get("/readyz")).status_code == 503:
                saw_not_ready = True
            await asyncio.sleep(0.5)
        assert saw_not_ready, "/readyz must report the broker as not delivering"

        await private_redis.start()
        async with asyncio.timeout(30):
            while (await service.http.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.2)
        for _ in range(5):
            r = await service.http.post("/api/orders", json=order_body(), headers=auth(customer))
            assert r.status_code == 201
            written += 1
        received += await recv_events(ws, 5)
        store_received += await recv_events(store_ws, 5)
        # The relay republishes what was written during the outage; nothing reaches us twice.
        await asyncio.sleep(1.5)
        await expect_silence(ws, 0.5)
    assert [e["seq"] for e in received] == list(range(1, written + 1))
    assert [e["seq"] for e in store_received] == list(range(1, written + 1))
    assert (service.metrics.registry.get_sample_value("hub_polls_total") or 0) > 0
