"""`python -m reconciler`: the outbox relay and the payment reconciler, any number at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from channels import create_broker
from orders.db import Database
from orders.metrics import Metrics
from orders.payments import FailurePolicy
from orders.settlement import Settlement
from orders.writes import Publisher
from reconciler.relay import Relay
from reconciler.worker import Reconciler
from server.gatewaying import open_gateways
from server.logs import configure
from server.ratelimit import GatewayRateLimiter
from server.settings import Settings

logger = logging.getLogger("reconciler")


async def main(settings: Settings) -> None:
    """Relay and reconcile until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = Database(
        settings.database_url,
        pool_size=2,
        sqlite_synchronous=settings.sqlite_synchronous,
        command_timeout=settings.db_command_timeout,
        connect_timeout=settings.db_connect_timeout,
    )
    broker = create_broker(settings.broker_url)
    await broker.connect()
    metrics = Metrics()
    try:
        relay = Relay(
            db,
            Publisher(db, broker, prefix=settings.redis_channel_prefix, metrics=metrics),
            metrics,
            grace=settings.relay_grace,
            interval=settings.relay_interval,
            retention=settings.retention,
        )
        async with (
            open_gateways(settings) as offered,
            GatewayRateLimiter(
                {name: settings.rate_limit(name) for name in offered.gateways},
                redis_url=settings.redis_url,
                prefix=settings.redis_channel_prefix,
                metrics=metrics,
            ) as limiter,
        ):
            publisher = Publisher(db, broker, prefix=settings.redis_channel_prefix, metrics=metrics)
            settlement = Settlement(
                db,
                publisher,
                metrics,
                gateways=offered.gateways,
                schedules=offered.schedules,
                policy=FailurePolicy(settings.payment_failure_policy),
                receipt_tax_rate_bp=settings.receipt_tax_rate_bp,
                limiter=limiter,
            )
            reconciler = Reconciler(
                settlement,
                interval=settings.reconciler_interval,
                batch=settings.reconciler_batch,
                concurrency=settings.reconciler_concurrency,
                name=f"reconciler:{settings.instance_id}",
            )
            logger.info("reconciling payments of: %s", ", ".join(sorted(offered.gateways)) or "-")
            await asyncio.gather(relay.run(stop), reconciler.run(stop))
    finally:
        await broker.disconnect()
        await db.dispose()


def run() -> None:
    """Entry point: a separate worker only makes sense with a shared broker (REDIS_URL)."""
    settings = Settings.from_environ(os.environ)
    configure(settings.log_level, settings.log_format)
    if not settings.broker_url:
        raise SystemExit(
            "REDIS_URL or REDIS_CLUSTER_URL: python -m reconciler needs a shared broker; "
            "on the embedded default the relay and reconciler run inside python -m server"
        )
    asyncio.run(main(settings))


if __name__ == "__main__":
    run()
