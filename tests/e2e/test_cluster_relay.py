"""The outbox relay on a Redis Cluster with one shard down: it waits for that shard, never parks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels import Message
from channels.cluster import ClusterBroker
from reconciler.relay import Relay
from tests.channels.cluster_helpers import LocalCluster
from tests.channels.conftest import make_cluster_broker
from tests.channels.helpers import wait_until
from tests.conftest import Backend, StartService, fresh_pg_database
from tests.e2e.test_cluster import customer_in_slot
from tests.reconciler.test_relay_poison import stragglers, unpublished_ids


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """PostgreSQL; the broker is the cluster each test hands to start_service."""
    async with fresh_pg_database() as url:
        yield Backend("postgres", url, None)


async def test_a_straggler_on_a_dead_shard_waits_for_it_and_is_not_parked(
    start_service: StartService, private_redis_cluster: LocalCluster
) -> None:
    cluster = private_redis_cluster
    broker: ClusterBroker = make_cluster_broker(cluster.url)
    await broker.connect()
    try:
        service = await start_service(broker=broker)
        prefix = service.settings.redis_channel_prefix
        # The dead shard must not be the one the relay's plain probe channel lives on: a probe
        # there would fail anyway and hide the bug this test is about.
        victim = next(m for m in cluster.masters() if m != broker.shard_of(prefix + "_probe"))
        slot = next(s for s, owner in cluster.slot_owners().items() if owner == victim)
        customer = customer_in_slot(prefix, slot, "dead")
        (event_id,) = await stragglers(service, customer)

        # The whole shard goes: master and replica. The other shards keep working.
        for address in [victim, *cluster.replicas_of(victim)]:
            cluster.kill(cluster.node(address))
        relay = Relay(service.db, service.publisher, service.metrics, grace=0, max_attempts=2)
        for _ in range(4):
            await relay.run_once()
        assert await unpublished_ids(service) == [event_id]
        parked = service.metrics.registry.get_sample_value("relay_parked_events_total")
        assert not parked, "an event whose shard is down is not poison"

        cluster.restart(cluster.node(victim))
        await asyncio.to_thread(cluster.wait_ok, within=30)
        await wait_until(lambda: broker.connected, within=15, what="the shard is back")
        async with broker.subscribe(f"{prefix}customer:{customer}") as sub:
            assert await relay.run_once() == 1
            item = await asyncio.wait_for(sub.get(), 5)
            while not isinstance(item, Message):
                item = await asyncio.wait_for(sub.get(), 5)
            assert item.data.startswith("2 ")
        assert await unpublished_ids(service) == []
    finally:
        await broker.disconnect()
