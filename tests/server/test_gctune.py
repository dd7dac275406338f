"""The garbage-collector policy: freeze after bursts of connections, thaw on schedule."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from server.gctune import GcPolicy


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    yield
    gc.unfreeze()


class Opened:
    """A stand-in for the hub's connection counter."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self) -> int:
        return self.total


def test_it_freezes_only_after_enough_new_connections() -> None:
    opened = Opened()
    policy = GcPolicy(opened_total=opened, freeze_after=100, thaw_interval=0)
    opened.total = 99
    assert policy.step() is None
    opened.total = 100
    assert policy.step() == "freeze"
    assert gc.get_freeze_count() > 0
    opened.total = 150
    assert policy.step() is None, "50 more is not another burst"
    opened.total = 200
    assert policy.step() == "freeze"


def test_it_hands_frozen_objects_back_on_schedule() -> None:
    opened = Opened()
    policy = GcPolicy(opened_total=opened, freeze_after=1, thaw_interval=0.05)
    opened.total = 1
    assert policy.step() == "freeze"
    time.sleep(0.06)
    assert policy.step() == "thaw"
    assert gc.get_freeze_count() == 0


class Node:
    """An object that can sit in a cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def test_what_the_policy_froze_is_freed_by_reference_counting_and_its_thaw_frees_cycles() -> None:
    opened = Opened()
    policy = GcPolicy(opened_total=opened, freeze_after=1, thaw_interval=0.05)
    plain, cyclic = Node(), Node()
    cyclic.other = cyclic
    plain_ref, cyclic_ref = weakref.ref(plain), weakref.ref(cyclic)
    opened.total = 1
    assert policy.step() == "freeze"  # the policy's freeze takes in both objects
    del plain, cyclic
    assert plain_ref() is None, "a connection's objects go when it ends"
    gc.collect()
    assert cyclic_ref() is not None, "a cycle the policy froze waits for its thaw"
    deadline = time.monotonic() + 0.05
    while time.monotonic() <= deadline:  # the thaw interval, by the clock
        time.sleep(0.01)
    assert policy.step() == "thaw"
    gc.collect()
    assert cyclic_ref() is None, "after the policy's thaw the collector frees the cycle"


async def test_what_the_running_policy_froze_goes_back_to_the_collector_when_it_stops() -> None:
    opened = Opened()
    policy = GcPolicy(opened_total=opened, check_every=3600)
    cyclic = Node()
    cyclic.other = cyclic
    cyclic_ref = weakref.ref(cyclic)
    task = asyncio.create_task(policy.run())
    await asyncio.sleep(0)  # one loop iteration: the task runs up to its first sleep
    assert gc.get_freeze_count() > 0, "the policy freezes what start-up built"
    del cyclic
    gc.collect()
    assert cyclic_ref() is not None, "a cycle the policy froze waits"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert gc.get_freeze_count() == 0, "stopped, the policy holds nothing frozen"
    gc.collect()
    assert cyclic_ref() is None, "what an app left behind is collected once it stopped"


async def test_a_policy_that_stops_after_its_thaw_leaves_others_frozen_objects_alone() -> None:
    opened = Opened()
    policy = GcPolicy(opened_total=opened, thaw_interval=0.05, check_every=3600)
    task = asyncio.create_task(policy.run())
    await asyncio.sleep(0)  # one loop iteration: the task runs up to its first sleep
    assert gc.get_freeze_count() > 0
    deadline = time.monotonic() + 0.05
    while time.monotonic() <= deadline:  # the thaw interval, by the clock
        await asyncio.sleep(0.01)
    assert policy.step() == "thaw"
    cyclic = Node()
    cyclic.other = cyclic
    cyclic_ref = weakref.ref(cyclic)
    gc.freeze()  # frozen by someone else after the policy's thaw
    del cyclic
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert cyclic_ref() is not None, "the policy hands back only what it still holds"
