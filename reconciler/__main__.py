"""`python -m reconciler`: the background worker (today: the outbox relay), any number at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from channels import create_broker
from reconciler.relay import Relay
from server.db import Database
from server.logs import configure
from server.metrics import Metrics
from server.settings import Settings
from server.writes import Publisher

logger = logging.getLogger("reconciler")


async def main(settings: Settings) -> None:
    """Relay until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = Database(
        settings.database_url, pool_size=2, sqlite_synchronous=settings.sqlite_synchronous
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
        await relay.run(stop)
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
            "on the embedded default the relay runs inside python -m server"
        )
    asyncio.run(main(settings))


if __name__ == "__main__":
    run()
