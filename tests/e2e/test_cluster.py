"""Real `python -m server` processes on PostgreSQL + a local Redis Cluster (sharded pub/sub).

Streams are spread over the three shards by choosing customer ids whose channel's hash slot
falls in each master's slots. Every test ends with a sentinel event per stream, so "nothing
lost, nothing doubled" is checked on the complete set, not after a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from redis.crc import key_slot
from websockets.asyncio.client import ClientConnection, connect

from tests.channels.cluster_helpers import LocalCluster
from tests.conftest import Backend
from tests.support.clients import auth, order_body, recv_json, token, until_sentinel
from tests.support.servers import Running, serve_subprocess

POS = token("pos-1", role="pos", store_id="store-1")
FLOW = ["PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"]
#: Fast failure detection in the web processes, so a failover test takes seconds.
FAST = {
    "BROKER_HEARTBEAT_INTERVAL": "0.2",
    "BROKER_HEARTBEAT_STALE_AFTER": "1",
    "HUB_POLL_INTERVAL": "0.25",
    # No 30 s safety poll of every stream: a repair on a healthy shard must mean a bug.
    "HUB_SAFETY_POLL_INTERVAL": "0",
    "LOG_LEVEL": "WARNING",
}


def customers_on_shards(cluster: LocalCluster, prefix: str, tag: str) -> dict[str, str]:
    """Master address → a customer id whose stream's channel lives on that shard."""
    owners = cluster.slot_owners()
    found: dict[str, str] = {}
    i = 0
    while len(found) < len(set(owners.values())):
        customer = f"{tag}{i}"
        owner = owners[key_slot(f"{prefix}customer:{customer}".encode())]
        found.setdefault(owner, customer)
        i += 1
    return found


def customer_in_slot(prefix: str, slot: int, tag: str) -> str:
    """A customer id whose stream's channel hashes to ``slot``."""
    i = 0
    while key_slot(f"{prefix}customer:{tag}{i}".encode()) != slot:
        i += 1
    return f"{tag}{i}"


@dataclass
class Writer:
    """Writes status changes to one customer's stream through the given processes, in turn."""

    customer: str
    bases: list[str]
    written: int = 0
    _order: str | None = None
    _step: int = 0
    _turn: int = field(default=0)

    async def write_one(self, http: httpx.AsyncClient) -> str:
        """One more event on the customer's stream; returns its order id."""
        base = self.bases[self._turn % len(self.bases)]
        self._turn += 1
        if self._order is None or self._step == len(FLOW):
            r = await http.post(
                f"{base}/api/orders", json=order_body(), headers=auth(token(self.customer))
            )
            assert r.status_code == 201, r.text
            self._order, self._step = r.json()["order"]["id"], 0
        else:
            r = await http.post(
                f"{base}/api/pos/orders/{self._order}/status",
                json={"status": FLOW[self._step]},
                headers=auth(POS),
            )
            assert r.status_code == 200, r.text
            self._step += 1
        self.written += 1
        assert self._order is not None
        return self._order

    async def sentinel(self, http: httpx.AsyncClient) -> str:
        """One more event, on a new order: ``until_sentinel`` recognises it by order id."""
        self._order = None
        return await self.write_one(http)

    async def run(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.write_one(http)
            await asyncio.sleep(0.03)


@contextlib.asynccontextmanager
async def watching(base: Running, customer: str) -> AsyncIterator[ClientConnection]:
    async with connect(f"{base.ws}/ws?token={token(customer)}") as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["head_seq"] == 0, hello
        yield ws


async def all_received(ws: ClientConnection, writer: Writer, http: httpx.AsyncClient) -> None:
    """Everything the writer wrote, then a sentinel: each seq exactly once, in order."""
    messages = await until_sentinel(ws, lambda: writer.sentinel(http), timeout=20)
    seqs = [m["seq"] for m in messages if m["type"] == "event"]
    assert [m["type"] for m in messages if m["type"] != "event"] == []
    assert seqs == list(range(1, writer.written)), (writer.customer, seqs)


def counters(text: str, name: str) -> dict[str, float]:
    """``name{reason="x"} v`` lines of a Prometheus page as {x: v} (no labels: key "")."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf'^{name}(?:\{{reason="([^"]*)"\}})? (\S+)$', line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


async def readyz(http: httpx.AsyncClient, base: Running) -> tuple[int, dict[str, Any]]:
    r = await http.get(f"{base.http}/readyz")
    return r.status_code, r.json()


async def wait_for(predicate: Any, within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await predicate():
        assert loop.time() < deadline, f"timed out after {within}s waiting until {what}"
        await asyncio.sleep(0.05)


async def test_streams_on_every_shard_reach_a_client_on_another_instance_and_resume_anywhere(
    pg_backend: Backend, redis_cluster: LocalCluster
) -> None:
    env = pg_backend.env(REDIS_CLUSTER_URL=redis_cluster.url)
    customers = customers_on_shards(redis_cluster, pg_backend.prefix, "spread")
    assert len(customers) == 3
    async with (
        serve_subprocess(env) as a,
        serve_subprocess(env) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        writers = {shard: Writer(c, [b.http]) for shard, c in customers.items()}
        async with contextlib.AsyncExitStack() as stack:
            sockets = {
                shard: await stack.enter_async_context(watching(a, c))
                for shard, c in customers.items()
            }
            for _ in range(5):
                for writer in writers.values():
                    await writer.write_one(http)
            for shard, ws in sockets.items():
                await all_received(ws, writers[shard], http)
            code, body = await readyz(http, a)
            assert code == 200, body
            assert sum(k.startswith("broker_shard ") for k in body["checks"]) == 3, body
        # No sticky sessions: each client resumes on the *other* process, from its last seq.
        for writer in writers.values():
            writer.bases = [a.http]
            seen = writer.written
            for _ in range(3):
                await writer.write_one(http)
            async with connect(
                f"{b.ws}/ws?token={token(writer.customer)}&since={seen}"
                f"&epoch={(await _epoch(b, writer.customer))}"
            ) as resumed:
                assert (await recv_json(resumed))["type"] == "hello"
                messages = await until_sentinel(resumed, functools.partial(writer.sentinel, http))
                assert [m["seq"] for m in messages] == list(range(seen + 1, writer.written))


async def _epoch(base: Running, customer: str) -> str:
    async with connect(f"{base.ws}/ws?token={token(customer)}") as ws:
        hello = await recv_json(ws)
        return str(hello["epoch"])


async def test_a_master_failover_loses_nothing_and_only_its_shard_is_repaired(
    pg_backend: Backend, private_redis_cluster: LocalCluster
) -> None:
    cluster = private_redis_cluster
    env = pg_backend.env(REDIS_CLUSTER_URL=cluster.url, **FAST)
    relay_env = {**env, "RELAY_IN_PROCESS": "true", "RELAY_GRACE": "0.5", "RELAY_INTERVAL": "0.2"}
    customers = customers_on_shards(cluster, pg_backend.prefix, "fo")
    victim = next(iter(customers))
    async with (
        serve_subprocess(env) as a,
        serve_subprocess(relay_env) as b,
        httpx.AsyncClient(timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        writers = {shard: Writer(c, [a.http, b.http]) for shard, c in customers.items()}
        # The failing shard's client on B, the others' on A: A must see nothing unusual.
        sockets = {
            shard: await stack.enter_async_context(watching(b if shard == victim else a, c))
            for shard, c in customers.items()
        }
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(http, stop)) for w in writers.values()]
        try:
            await wait_for(
                _async(lambda: all(w.written >= 10 for w in writers.values())), 10, "writes"
            )
            cluster.kill(cluster.node(victim))

            async def degraded_shard_named() -> bool:
                code, body = await readyz(http, b)
                bad = [k for k, v in body["checks"].items() if v != "ok"]
                return code == 503 and any(k.startswith(f"broker_shard {victim} ") for k in bad)

            await wait_for(degraded_shard_named, 10, "/readyz names the failed shard")
            _, body = await readyz(http, b)
            assert [k for k, v in body["checks"].items() if v != "ok"] == [
                "broker",
                next(k for k in body["checks"] if k.startswith(f"broker_shard {victim} ")),
            ], body
            # The replica is promoted; push resumes through it, no restart.
            await asyncio.to_thread(cluster.wait_ok, within=30)
            for base in (a, b):
                await wait_for(lambda base=base: _ready(http, base), 20, f"{base.http} ready again")
            written = {shard: w.written for shard, w in writers.items()}
            await wait_for(
                _async(lambda: all(w.written >= written[s] + 10 for s, w in writers.items())),
                10,
                "writes after the failover",
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        for shard, ws in sockets.items():
            await all_received(ws, writers[shard], http)

        metrics_a = (await http.get(f"{a.http}/metrics")).text
        metrics_b = (await http.get(f"{b.http}/metrics")).text
        repairs = {"reconnected", "moved", "poll", "seq_jump", "late subscribe", "overflow"}
        on_a = {k: v for k, v in counters(metrics_a, "ws_backfills_total").items() if v}
        on_b = {k: v for k, v in counters(metrics_b, "ws_backfills_total").items() if v}
        assert not repairs & set(on_a), f"A's clients are on healthy shards, yet: {on_a}"
        assert repairs & set(on_b), f"B's client was on the failed shard: {on_b}"
        # What the dead shard refused was left to the relay, which published it.
        assert counters(metrics_b, "relay_events_total").get("", 0) > 0
        dsn = pg_backend.database_url.replace("postgresql+asyncpg://", "postgresql://")

        async def all_published() -> bool:
            conn = await asyncpg.connect(dsn)
            try:
                return bool(
                    await conn.fetchval("SELECT count(*) FROM events WHERE published_at IS NULL")
                    == 0
                )
            finally:
                await conn.close()

        await wait_for(all_published, 10, "every event published")


async def test_resharding_under_connected_clients_moves_their_subscriptions_and_loses_nothing(
    pg_backend: Backend, private_redis_cluster: LocalCluster
) -> None:
    cluster = private_redis_cluster
    env = pg_backend.env(REDIS_CLUSTER_URL=cluster.url, **FAST)
    source, target, _ = cluster.masters()
    first = min(slot for slot, owner in cluster.slot_owners().items() if owner == source)
    customers = customers_on_shards(cluster, pg_backend.prefix, "rs")
    customers["moving"] = customer_in_slot(pg_backend.prefix, first, "mv")
    channel = f"{pg_backend.prefix}customer:{customers['moving']}"
    async with (
        serve_subprocess(env) as a,
        serve_subprocess(env) as b,
        httpx.AsyncClient(timeout=10) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        writers = {key: Writer(c, [b.http]) for key, c in customers.items()}
        sockets = {
            key: await stack.enter_async_context(watching(a, c)) for key, c in customers.items()
        }
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(http, stop)) for w in writers.values()]
        try:
            await wait_for(_async(lambda: writers["moving"].written >= 5), 10, "writes")
            await asyncio.to_thread(cluster.reshard, source, target, 10)
            assert cluster.slot_owners()[first] == target
            # A's subscription followed the slot to its new master.
            await wait_for(
                _async(
                    lambda: (
                        cluster.command(cluster.node(target), "PUBSUB", "SHARDNUMSUB", channel)[1]
                        == 1
                    )
                ),
                10,
                "the subscription is on the new owner",
            )
            moved_at = writers["moving"].written
            await wait_for(
                _async(lambda: writers["moving"].written >= moved_at + 5), 10, "more writes"
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        for key, ws in sockets.items():
            await all_received(ws, writers[key], http)


async def _ready(http: httpx.AsyncClient, base: Running) -> bool:
    return (await readyz(http, base))[0] == 200


def _async(predicate: Any) -> Any:
    async def check() -> bool:
        return bool(predicate())

    return check
