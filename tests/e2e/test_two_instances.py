"""Real `python -m server` processes sharing PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from tests.conftest import Backend
from tests.support.clients import (
    auth,
    expect_close,
    order_body,
    recv_events,
    recv_json,
    token,
    until_sentinel,
)
from tests.support.servers import serve_subprocess

POS = token("pos-1", role="pos", store_id="store-1")


async def test_a_subscriber_on_one_instance_receives_in_order_what_is_written_through_another(
    pg_backend: Backend,
) -> None:
    customer = token("rita")
    async with serve_subprocess(pg_backend.env()) as a, serve_subprocess(pg_backend.env()) as b:
        async with (
            httpx.AsyncClient(timeout=10) as http,
            connect(f"{a.ws}/ws?token={customer}") as on_a,
            connect(f"{b.ws}/ws", additional_headers=auth(POS)) as store_on_b,
        ):
            assert (await recv_json(on_a))["type"] == "hello"
            assert (await recv_json(store_on_b))["type"] == "hello"
            created = await http.post(
                f"{b.http}/api/orders", json=order_body(), headers=auth(customer)
            )
            assert created.status_code == 201, created.text
            order_id = created.json()["order"]["id"]
            for status in ["PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"]:
                # Alternate the instance that takes the write.
                base = a.http if status in ("READY", "DELIVERED") else b.http
                r = await http.post(
                    f"{base}/api/pos/orders/{order_id}/status",
                    json={"status": status},
                    headers=auth(POS),
                )
                assert r.status_code == 200, r.text
            events = await recv_events(on_a, 5)
            store_events = await recv_events(store_on_b, 5)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert [e["status"] for e in events] == [
        "CONFIRMED",
        "PREPARING",
        "READY",
        "OUT_FOR_DELIVERY",
        "DELIVERED",
    ]
    assert [e["event_id"] for e in store_events] == [e["event_id"] for e in events]


async def test_a_writer_killed_between_commit_and_publish_loses_nothing(
    pg_backend: Backend, tmp_path: Path
) -> None:
    customer = token("sam")
    marker = tmp_path / "paused"
    # The reader runs the relay in-process, so the straggler the killed writer leaves behind is
    # published by a process that is still alive.
    reader_env = pg_backend.env(RELAY_IN_PROCESS="true", RELAY_GRACE="0.5", RELAY_INTERVAL="0.2")
    writer_env = pg_backend.env(PAUSE_MARKER=str(marker))
    async with (
        serve_subprocess(reader_env) as reader,
        serve_subprocess(writer_env, module="tests.support.paused_server") as writer,
        httpx.AsyncClient(timeout=10) as http,
        connect(f"{reader.ws}/ws?token={customer}") as ws,
    ):
        assert (await recv_json(ws))["type"] == "hello"
        created = await http.post(
            f"{reader.http}/api/orders", json=order_body(), headers=auth(customer)
        )
        assert created.status_code == 201, created.text
        order_id = created.json()["order"]["id"]
        assert [e["status"] for e in await recv_events(ws, 1)] == ["CONFIRMED"]
        # The writer commits PREPARING and answers (durable before acknowledged; publishing is
        # off the request's path), then its publisher stops at the pause point.
        move = await http.post(
            f"{writer.http}/api/pos/orders/{order_id}/status",
            json={"status": "PREPARING"},
            headers=auth(POS),
        )
        assert move.status_code == 200, move.text
        async with asyncio.timeout(15):
            while not marker.exists():
                await asyncio.sleep(0.05)
        assert marker.read_text().split() == [str(move.json()["event"]["event_id"])]
        assert writer.process is not None
        writer.process.send_signal(signal.SIGKILL)  # dies with the commit done, the publish not
        writer.process.wait(10)
        # The committed change still reaches the live subscriber on the surviving instance,
        # and later writes follow it in order.
        (straggler,) = await recv_events(ws, 1, timeout=15)
        assert (straggler["seq"], straggler["status"]) == (2, "PREPARING")
        r = await http.post(
            f"{reader.http}/api/pos/orders/{order_id}/status",
            json={"status": "READY"},
            headers=auth(POS),
        )
        assert r.status_code == 200, r.text
        (after,) = await recv_events(ws, 1)
        assert (after["seq"], after["status"]) == (3, "READY")
        assert after["previous_status"] == "PREPARING"
        stored = await http.get(f"{reader.http}/api/orders/{order_id}", headers=auth(customer))
        assert stored.json()["order"]["status"] == "READY"

        async def sentinel() -> str:
            r = await http.post(
                f"{reader.http}/api/orders", json=order_body(), headers=auth(customer)
            )
            return str(r.json()["order"]["id"])

        assert await until_sentinel(ws, sentinel) == []


async def test_sigterm_closes_sockets_with_1012_and_exits_cleanly(pg_backend: Backend) -> None:
    async with serve_subprocess(pg_backend.env()) as a:
        ws = await connect(f"{a.ws}/ws?token={token('tess')}")
        await recv_json(ws)
        assert a.process is not None
        a.process.send_signal(signal.SIGTERM)
        assert await expect_close(ws, timeout=15) == 1012
        # uvicorn re-raises the signal after its graceful shutdown: "terminated by SIGTERM".
        assert await asyncio.to_thread(a.process.wait, 15) in (0, -signal.SIGTERM)


def _batches_of_more_than_one(metrics: str) -> float:
    """How many group-commit batches of the process applied two changes or more."""
    count = alone = 0.0
    for line in metrics.splitlines():
        if line.startswith("group_commit_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith('group_commit_batch_size_bucket{le="1.0"}'):
            alone = float(line.split()[-1])
    return count - alone


async def test_two_processes_group_committing_to_one_store_keep_its_stream_whole_and_in_order(
    pg_backend: Backend,
) -> None:
    """DESIGN §1 order and no gap, with two web processes each batching one store's changes.

    Every order walks its path with each move sent to the other process than the last, all
    orders at once, so both processes' group commits hold batches of the same store at the same
    time. One lane per process puts every change of the store in the same queue there.
    """
    env = pg_backend.env(GROUP_COMMIT_LANES="1")
    customers = [token(f"gc-{i}") for i in range(16)]
    walk = ["PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"]
    async with (
        serve_subprocess(env) as a,
        serve_subprocess(env) as b,
        httpx.AsyncClient(timeout=30) as http,
        connect(f"{a.ws}/ws", additional_headers=auth(POS)) as store,
    ):
        assert (await recv_json(store))["type"] == "hello"
        created = [
            await http.post(f"{b.http}/api/orders", json=order_body(), headers=auth(customer))
            for customer in customers
        ]
        assert all(r.status_code == 201 for r in created), [r.text for r in created]
        order_ids = [r.json()["order"]["id"] for r in created]

        async def walk_order(index: int, order_id: str) -> None:
            for step, status in enumerate(walk):
                base = (a, b)[(index + step) % 2].http
                r = await http.post(
                    f"{base}/api/pos/orders/{order_id}/status",
                    json={"status": status},
                    headers=auth(POS),
                )
                assert r.status_code == 200, r.text

        await asyncio.gather(*(walk_order(i, o) for i, o in enumerate(order_ids)))

        async def sentinel() -> str:
            r = await http.post(
                f"{a.http}/api/orders", json=order_body(), headers=auth(customers[0])
            )
            assert r.status_code == 201, r.text
            return str(r.json()["order"]["id"])

        delivered = [m for m in await until_sentinel(store, sentinel) if m["type"] == "event"]
        # The race this test names happened: each process committed batches of two or more.
        for process in (a, b):
            text = (await http.get(f"{process.http}/metrics")).text
            assert _batches_of_more_than_one(text) >= 1, f"no batch of two at {process.http}"
        logged = await http.get(f"{a.http}/api/events", params={"since": 0}, headers=auth(POS))
        assert logged.status_code == 200, logged.text
    seqs = [m["seq"] for m in delivered]
    # Whole and in order: contiguous seqs, each once, the moves of every order in its path.
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert len(delivered) == len(order_ids) * (1 + len(walk))
    for order_id in order_ids:
        statuses = [m["status"] for m in delivered if m["order_id"] == order_id]
        assert statuses == ["CONFIRMED", *walk], (order_id, statuses)
    # What was delivered live is what the log holds, seq for seq.
    log = {e["seq"]: e["event_id"] for e in logged.json()["events"]}
    assert all(log[m["seq"]] == m["event_id"] for m in delivered)
