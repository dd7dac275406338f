"""Writing around the service: what a writer that dies between commit and publish leaves."""

from __future__ import annotations

from typing import TYPE_CHECKING

from channels import create_broker
from orders.workflow import OrderStatus
from orders.writes import Actor, Publisher, change_order_status

if TYPE_CHECKING:
    from tests.conftest import Service


async def write_without_publishing(service: Service, order_id: str, to: OrderStatus) -> None:
    """Commit a status change whose publish never happens (the writer died right after commit).

    The write goes through the one write path with a broker that was never connected, so every
    publish raises BrokerError and the event stays unpublished in the log.
    """
    dead = Publisher(
        service.db,
        create_broker(None),
        prefix=service.settings.redis_channel_prefix,
        metrics=service.metrics,
    )
    await change_order_status(
        service.db, dead, service.metrics, order_id=order_id, to=to, actor=Actor.system()
    )
