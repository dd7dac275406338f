"""The publish queue: its sender outlives a failed batch, and it publishes in commit order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from channels import Message
from orders.hooks import Hooks
from server import protocol
from tests.conftest import StartService
from tests.support.clients import auth, order_body, token


class FailFirstPublish(Hooks):
    """The first batch the sender takes fails with an error that is not the broker's."""

    def __init__(self) -> None:
        self.failed = False

    async def before_publish(self, event_ids: Sequence[int]) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected: a batch that cannot be published")


async def test_the_sender_survives_a_failed_batch_and_publishes_the_next_in_order(
    start_service: StartService,
) -> None:
    hooks = FailFirstPublish()
    service = await start_service(hooks=hooks)
    channel = service.settings.redis_channel_prefix + "customer:xia"
    async with service.broker.subscribe(channel) as sub:
        for n in range(4):
            r = await service.http.post(
                "/api/orders", json=order_body(), headers=auth(token("xia"))
            )
            assert r.status_code == 201, r.text
            if n == 0:
                # The first batch (this order alone) has been taken, and failed.
                async with asyncio.timeout(5):
                    while not hooks.failed:
                        await asyncio.sleep(0.01)
        seqs: list[int] = []
        async with asyncio.timeout(10):
            while len(seqs) < 3:
                item = await sub.get()
                if isinstance(item, Message):
                    seqs.append(protocol.unpack(item.data)[0])
    # The first went to the relay; the sender kept going, in commit order.
    assert seqs == [2, 3, 4]
