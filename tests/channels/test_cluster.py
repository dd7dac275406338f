"""ClusterBroker on a real local Redis Cluster: shards, failover, resharding, per-shard health."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from channels import BrokerError, Gap, Heartbeat, Message, create_broker
from channels.cluster import ClusterBroker, ClusterUrl, channel_slot, same_shard
from channels.fanout import Subscription
from tests.channels.cluster_helpers import LocalCluster, channel_on
from tests.channels.conftest import make_cluster_broker
from tests.channels.helpers import receive, receive_message, wait_until


@contextlib.asynccontextmanager
async def connected(url: str, **options: float) -> AsyncIterator[ClusterBroker]:
    broker = make_cluster_broker(url, **options)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.disconnect()


def per_shard(cluster: LocalCluster, prefix: str) -> dict[str, str]:
    """Master address → a channel of ``prefix`` on that shard."""
    owners = cluster.slot_owners()
    return {address: channel_on(owners, address, prefix) for address in cluster.masters()}


async def next_is(sub: Subscription, message: Message, within: float = 10.0) -> list[Gap]:
    """Receive until ``message`` (a sentinel) arrives; return the gaps seen before it."""
    gaps: list[Gap] = []
    while True:
        item = await receive(sub, within)
        if isinstance(item, Gap):
            gaps.append(item)
            continue
        assert item == message, item
        return gaps


def test_cluster_urls_parse_without_echoing_secrets() -> None:
    url = ClusterUrl.parse("rediss+cluster://user:s3cret@a:7000, b:7001")
    assert url.seeds == ("a:7000", "b:7001")
    assert url.tls
    assert url.node_url("c:7002") == "rediss://user:s3cret@c:7002/0"
    assert ClusterUrl.parse("redis://only").seeds == ("only:6379",)
    for bad in ("http://a:1", "redis://user:s3cret@a:port"):
        with pytest.raises(ValueError) as caught:
            ClusterUrl.parse(bad)
        assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "channel", ["p:customer:rita", "p:{tag}x", "p:{}x", "p:{a}b}", "p:}odd", "p:{x", ""]
)
def test_same_shard_names_a_channel_in_the_same_slot(channel: str) -> None:
    probe = same_shard(channel, "p:_probe")
    assert probe.startswith("p:_probe")
    if probe != "p:_probe":
        assert channel_slot(probe) == channel_slot(channel)
    else:
        # Only a channel whose hashed part is empty or holds "}" falls back.
        assert channel == "" or "}" in channel


def test_create_broker_picks_the_cluster_for_its_schemes() -> None:
    assert isinstance(create_broker("redis+cluster://127.0.0.1:7000"), ClusterBroker)
    assert isinstance(create_broker("rediss+cluster://127.0.0.1:7000"), ClusterBroker)


async def test_channels_spread_over_every_shard_on_one_connection_per_shard(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    names = [f"{prefix}{i}" for i in range(300)]
    async with connected(redis_cluster.url) as broker:
        async with contextlib.AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(broker.subscribe(name)) for name in names]
            await broker.publish_many([(name, name) for name in names])
            for sub, name in zip(subs, names, strict=True):
                assert await receive(sub) == Message(name, name)
            counts: dict[str, int] = {}
            for name in names:
                owner = broker.shard_of(name)
                assert owner is not None
                counts[owner] = counts.get(owner, 0) + 1
            assert set(counts) == set(redis_cluster.masters())
            for address, count in counts.items():
                # This process's channels on that master: all on one connection.
                clients = redis_cluster.command(redis_cluster.node(address), "CLIENT", "LIST")
                holding = [line for line in clients.splitlines() if f"ssub={count} " in line]
                assert len(holding) == 1, clients


async def test_a_killed_master_gaps_only_its_shard_and_push_resumes_on_the_promoted_replica(
    private_redis_cluster: LocalCluster, prefix: str
) -> None:
    cluster = private_redis_cluster
    channels = per_shard(cluster, prefix)
    victim, *others = list(channels)
    async with (
        connected(cluster.url, health_check_interval=1.0) as broker,
        Heartbeat(broker, channel=prefix + "hb", interval=0.1, stale_after=0.5) as heartbeat,
        contextlib.AsyncExitStack() as stack,
    ):
        subs = {
            address: await stack.enter_async_context(broker.subscribe(channel))
            for address, channel in channels.items()
        }
        await wait_until(lambda: heartbeat.delivering, what="every shard delivers")
        assert all(heartbeat.shard_states().values()) and len(heartbeat.shard_states()) == 3

        cluster.kill(cluster.node(victim))
        # A publish to the dead shard fails at once (the relay will re-publish it)...
        with pytest.raises(BrokerError):
            await broker.publish(channels[victim], "lost")
        # ...and the heartbeat names that shard, and only it, as not delivering.
        await wait_until(
            lambda: not heartbeat.delivering_for(channels[victim]), what="victim stale"
        )
        assert all(heartbeat.delivering_for(channels[a]) for a in others)
        states = heartbeat.shard_states()
        assert [name for name, ok in states.items() if not ok] == [
            next(name for name in states if name.startswith(victim + " "))
        ]

        # The replica takes over; the broker follows it without a restart.
        await asyncio.to_thread(cluster.wait_ok, within=30)
        await wait_until(lambda: broker.shard_of(channels[victim]) != victim, within=15)
        await wait_until(lambda: broker.connected, within=15, what="connected again")
        await wait_until(lambda: heartbeat.delivering, within=15, what="delivering again")
        for address, channel in channels.items():
            await broker.publish(channel, "sentinel")
            gaps = await next_is(subs[address], Message(channel, "sentinel"))
            if address == victim:
                assert gaps, "the failed-over shard's subscribers must hear of the gap"
            else:
                assert gaps == [], f"{address} did not fail, yet its subscriber got {gaps}"


async def test_resharding_moves_subscriptions_with_their_slot(
    private_redis_cluster: LocalCluster, prefix: str
) -> None:
    cluster = private_redis_cluster
    source, target, _ = cluster.masters()
    owners = cluster.slot_owners()
    first = min(slot for slot, owner in owners.items() if owner == source)
    # redis-cli moves the source's lowest slots first: a channel in the very first one moves.
    moving = next(
        name for i in range(1_000_000) if key_slot((name := f"{prefix}m{i}").encode()) == first
    )
    staying = channel_on(owners, source, prefix, start=10_000)
    assert channel_slot(staying) > first + 20
    # No periodic map refresh during the test: the broker must follow Redis's own
    # sunsubscribe push (and the MOVED it then gets), not stumble on the move later.
    async with (
        connected(cluster.url, refresh_interval=600) as broker,
        broker.subscribe(moving) as moved_sub,
        broker.subscribe(staying) as staying_sub,
    ):
        await broker.publish(moving, "before")
        assert await receive(moved_sub) == Message(moving, "before")

        await asyncio.to_thread(cluster.reshard, source, target, 10)
        assert cluster.slot_owners()[first] == target
        # Redis pushed sunsubscribe; the broker re-subscribed on the new owner and said so.
        assert await receive(moved_sub, 10) == Gap("moved")
        await wait_until(lambda: broker.shard_of(moving) == target, what="map follows")
        numsub = cluster.command(cluster.node(target), "PUBSUB", "SHARDNUMSUB", moving)
        assert numsub[1] == 1
        await broker.publish(moving, "after")
        assert await receive_message(moved_sub) == Message(moving, "after")
        await broker.publish(staying, "untouched")
        assert await next_is(staying_sub, Message(staying, "untouched")) == []


async def test_a_black_holed_master_costs_one_timeout_not_one_per_publish(prefix: str) -> None:
    # A node timeout longer than the test: the paused master is not failed over meanwhile.
    cluster = LocalCluster(replicas=0, node_timeout_ms=30_000)
    cluster.start()
    try:
        channels = per_shard(cluster, prefix)
        victim, healthy, _ = list(channels)
        async with (
            connected(cluster.url) as broker,
            broker.subscribe(channels[healthy]) as sub,
        ):
            cluster.pause(cluster.node(victim))
            loop = asyncio.get_running_loop()
            for attempt in range(3):
                started = loop.time()
                with pytest.raises(BrokerError):
                    await broker.publish_many(
                        [(channels[victim], "lost"), (channels[healthy], str(attempt))]
                    )
                took = loop.time() - started
                # The healthy shard got its message whatever the other shard did.
                assert await receive(sub) == Message(channels[healthy], str(attempt))
                if attempt:
                    assert took < 0.5, f"publish {attempt} waited {took:.2f}s on a dead node"
            cluster.resume(cluster.node(victim))
    finally:
        cluster.stop()


@pytest.mark.parametrize("ci", ["1", "true", "github-actions"])
def test_under_ci_a_missing_redis_server_fails_the_cluster_tests(ci: str, tmp_path: Path) -> None:
    # A PATH with python but no redis-server / redis-cli.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "CI": ci, "PATH": str(bin_dir)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/channels/test_cluster.py",
            "-k",
            "one_connection_per_shard",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "redis-server / redis-cli are not installed (CI is set" in result.stdout, result.stdout
