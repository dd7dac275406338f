"""Fixtures for the channels tests: each broker kind, fresh channel names, a private Redis."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from channels import Broker
from channels.cluster import ClusterBroker
from channels.memory import MemoryBroker
from channels.redis import RedisBroker
from tests.channels.cluster_helpers import LocalCluster
from tests.channels.helpers import REDIS_URL, unavailable


@functools.cache
def _shared_redis_error() -> str | None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return None


@pytest.fixture
def redis_url() -> str:
    """The shared Redis; skipped (failed under CI=true) when it is unreachable."""
    error = _shared_redis_error()
    if error is not None:
        unavailable(f"Redis at {REDIS_URL} is unreachable: {error}")
    return REDIS_URL


def make_redis_broker(
    url: str, *, subscribe_timeout: float = 2.0, health_check_interval: float = 10.0
) -> RedisBroker:
    """A RedisBroker with short delays, so outage tests run in seconds."""
    return RedisBroker(
        url,
        reconnect_delay=0.05,
        max_reconnect_delay=0.2,
        subscribe_timeout=subscribe_timeout,
        health_check_interval=health_check_interval,
    )


def make_cluster_broker(url: str, **options: float) -> ClusterBroker:
    """A ClusterBroker with short delays, so failover tests run in seconds."""
    defaults = {"reconnect_delay": 0.05, "max_reconnect_delay": 0.5, "subscribe_timeout": 2.0}
    return ClusterBroker(url, **{**defaults, **options})


@pytest.fixture(params=["memory", "redis", "cluster"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A connected broker of each kind; disconnected afterwards."""
    instance: MemoryBroker | RedisBroker | ClusterBroker
    if request.param == "memory":
        instance = MemoryBroker()
    elif request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        instance = make_cluster_broker(cluster.url)
    else:
        instance = make_redis_broker(request.getfixturevalue("redis_url"))
    await instance.connect()
    try:
        yield instance
    finally:
        await instance.disconnect()


@pytest.fixture
def prefix() -> str:
    """A channel prefix no other test uses, so tests sharing one Redis never collide."""
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
async def shared_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An admin client on the shared Redis, for inspecting what the broker did."""
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client
