"""Heartbeat: prove the broker delivers, not merely answers, by receiving what we publish.

On a sharded broker (a Redis Cluster) one shard can stop delivering while the others go on, so
the heartbeat goes through every shard: one probe channel per shard, named so that its hash
slot falls in that shard's slots, and delivery is judged per shard (:meth:`delivering_for`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, runtime_checkable

from channels.base import Broker, Message

logger = logging.getLogger(__name__)

#: How far to search for a probe name landing in a shard (a shard owns at least one slot).
_PROBE_SEARCH = 1_000_000


@runtime_checkable
class ShardedBroker(Protocol):
    """A broker whose channels live on shards (by hash slot), like the Redis Cluster one."""

    def shards(self) -> Mapping[str, tuple[tuple[int, int], ...]]:
        """Every shard's name (its master's address) and the slot ranges it owns."""
        ...

    def shard_of(self, channel: str) -> str | None:
        """The shard ``channel`` lives on, or None while the shard map is unknown."""
        ...


class _Probe:
    """One heartbeat channel: the task that holds its subscription, and when a beat came."""

    __slots__ = ("last_received", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.last_received: float | None = None


class Heartbeat:
    """Publish to a private channel (one per shard) every ``interval``; watch it come back."""

    def __init__(
        self,
        broker: Broker,
        *,
        channel: str | None = None,
        interval: float = 1.0,
        stale_after: float = 3.0,
    ) -> None:
        """Create a heartbeat on ``broker``; it runs between start() and stop()."""
        if interval <= 0 or stale_after <= 0:
            raise ValueError("interval and stale_after must be positive")
        self._broker = broker
        self._sharded = broker if isinstance(broker, ShardedBroker) else None
        self._channel = channel if channel is not None else f"_heartbeat:{uuid.uuid4().hex}"
        self._interval = interval
        self._stale_after = stale_after
        # Probe channel → its state; on an unsharded broker the one probe is ``channel``.
        self._probes: dict[str, _Probe] = {}
        # Shard → its probe channel, for the shard map ``_probes_for`` last saw.
        self._by_shard: dict[str, str] = {}
        self._seen_map: object = None
        self._running = False
        self._beater: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Heartbeat channel={self._channel!r} delivering={self.delivering}>"

    @property
    def channel(self) -> str:
        """The channel the heartbeat is published on (on a sharded broker: the probes' prefix)."""
        return self._channel

    @property
    def last_received_age(self) -> float | None:
        """Seconds since a heartbeat last came back (the stalest shard's), or None if one never
        did."""
        if not self._probes:
            return None
        ages = [self._age(probe) for probe in self._probes.values()]
        if any(age is None for age in ages):
            return None
        return max(age for age in ages if age is not None)

    @property
    def delivering(self) -> bool:
        """Whether a heartbeat came back within ``stale_after`` seconds, through every shard."""
        if self._sharded is not None:
            self._probes_for()
            if not self._by_shard:
                return False
            return all(self._fresh(self._probes.get(c)) for c in self._by_shard.values())
        return self._fresh(self._probes.get(self._channel))

    def delivering_for(self, channel: str) -> bool:
        """Whether the shard carrying ``channel`` delivers (unsharded: the whole broker)."""
        if self._sharded is None:
            return self.delivering
        self._probes_for()
        probe = self._by_shard.get(self._sharded.shard_of(channel) or "")
        return probe is not None and self._fresh(self._probes.get(probe))

    def shard_states(self) -> dict[str, bool]:
        """Per shard (``address slots a-b,...``): whether it delivers; empty when unsharded."""
        if self._sharded is None:
            return {}
        self._probes_for()
        shards = self._sharded.shards()
        states: dict[str, bool] = {}
        for shard, probe in self._by_shard.items():
            ranges = ",".join(f"{a}-{b}" for a, b in shards.get(shard, ()))
            states[f"{shard} slots {ranges}"] = self._fresh(self._probes.get(probe))
        return states

    def _age(self, probe: _Probe) -> float | None:
        if probe.last_received is None:
            return None
        return time.monotonic() - probe.last_received

    def _fresh(self, probe: _Probe | None) -> bool:
        if probe is None:
            return False
        age = self._age(probe)
        return age is not None and age <= self._stale_after

    def _probes_for(self) -> dict[str, str]:
        """Shard → probe channel for the current shard map (recomputed when the map changes)."""
        assert self._sharded is not None
        shards = self._sharded.shards()
        if shards is self._seen_map:
            return self._by_shard
        by_shard: dict[str, str] = {}
        wanted = set(shards)
        # The lowest-numbered probe in each shard: the same channel before and after a
        # failover (same slots, new master), so its history carries over.
        for i in range(_PROBE_SEARCH):
            if not wanted:
                break
            name = f"{self._channel}:{{{i}}}"
            shard = self._sharded.shard_of(name)
            if shard in wanted:
                by_shard[shard] = name
                wanted.discard(shard)
        self._by_shard = by_shard
        self._seen_map = shards
        return by_shard

    async def start(self) -> None:
        """Subscribe to the heartbeat channel(s) and start beating; idempotent."""
        if self._running:
            return
        self._running = True
        await self._sync_probes()
        self._beater = asyncio.create_task(self._beat(), name="heartbeat-publish")

    async def stop(self) -> None:
        """Stop beating and unsubscribe; idempotent."""
        self._running = False
        beater, self._beater = self._beater, None
        if beater is not None:
            beater.cancel()
            await asyncio.gather(beater, return_exceptions=True)
        probes, self._probes = self._probes, {}
        for probe in probes.values():
            await self._close(probe)

    async def __aenter__(self) -> Heartbeat:
        """Start, and return the heartbeat."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop."""
        await self.stop()

    async def _sync_probes(self) -> None:
        """Subscribe the probes the shard map calls for; drop those it no longer does."""
        wanted = set(self._probes_for().values()) if self._sharded is not None else {self._channel}
        for name in list(self._probes):
            if name not in wanted:
                await self._close(self._probes.pop(name))
        for name in wanted & set(self._probes):
            task = self._probes[name].task
            if task is not None and task.done() and not task.cancelled():
                # Its subscription ended with an error: log it and hold the probe again.
                logger.error("heartbeat probe %s failed", name, exc_info=task.exception())
                del self._probes[name]
        for name in wanted - set(self._probes):
            probe = self._probes[name] = _Probe()
            # A task each: a shard slow to confirm its probe must not hold up the others' beats.
            probe.task = asyncio.create_task(
                self._receive(name, probe), name=f"heartbeat-receive-{name}"
            )

    async def _close(self, probe: _Probe) -> None:
        if probe.task is not None:
            probe.task.cancel()
            await asyncio.gather(probe.task, return_exceptions=True)

    async def _receive(self, name: str, probe: _Probe) -> None:
        async with self._broker.subscribe(name, maxsize=16) as subscription:
            async for item in subscription:
                if isinstance(item, Message):
                    probe.last_received = time.monotonic()

    async def _publish(self, channel: str, beat: int) -> bool:
        try:
            # A publish stuck longer than stale_after proves nothing; do not let it stall us.
            async with asyncio.timeout(self._stale_after):
                await self._broker.publish(channel, str(beat))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("heartbeat publish to %s failed: %s", channel, exc)
            return False
        return True

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        failing: set[str] = set()
        beat = 0
        while True:
            beat += 1
            next_beat = loop.time() + self._interval
            try:
                if self._sharded is not None:
                    await self._sync_probes()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("heartbeat could not follow the shard map")
            names = list(self._probes)
            # Each shard on its own: one dead shard must not hold up the others' beats.
            results = await asyncio.gather(*(self._publish(name, beat) for name in names))
            for name, ok in zip(names, results, strict=True):
                # Warn once per outage, not once a second.
                if not ok and name not in failing:
                    logger.warning("heartbeat publish failed on %s", name)
                    failing.add(name)
                elif ok and name in failing:
                    logger.info("heartbeat publish works again on %s", name)
                    failing.discard(name)
            await asyncio.sleep(max(0.0, next_beat - loop.time()))
