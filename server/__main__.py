"""`python -m server`: run the web process (and, on the embedded default, the relay in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os

import uvicorn

from channels import create_broker
from server.app import create_app
from server.db import Database, migrate
from server.logs import configure, uvicorn_log_config
from server.metrics import Metrics
from server.settings import Settings
from server.writes import Publisher

logger = logging.getLogger("server")


async def main(settings: Settings) -> None:
    """Migrate, open the broker, serve until SIGINT/SIGTERM, then shut down gracefully."""
    if settings.migrate_on_start:
        await migrate(settings.database_url)
        settings = dataclasses.replace(settings, migrate_on_start=False)
    broker = create_broker(settings.redis_url)
    await broker.connect()
    metrics = Metrics()
    app = create_app(settings, broker=broker, metrics=metrics)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=settings.ws_impl,  # type: ignore[arg-type]
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_timeout),
        log_config=uvicorn_log_config(),
        lifespan="on",
        proxy_headers=True,
    )
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    relay_task: asyncio.Task[None] | None = None
    relay_db: Database | None = None
    if settings.relay_enabled:
        # The only place the server starts reconciler code: the embedded single-process setup.
        from reconciler.relay import Relay

        relay_db = Database(settings.database_url, pool_size=2)
        publisher = Publisher(relay_db, broker, prefix=settings.redis_channel_prefix, metrics=metrics)
        relay = Relay(
            relay_db, publisher, metrics, grace=settings.relay_grace, interval=settings.relay_interval
        )
        relay_task = asyncio.create_task(relay.run(stop), name="relay")
    try:
        await server.serve()
    finally:
        stop.set()
        if relay_task is not None:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
        if relay_db is not None:
            await relay_db.dispose()
        await broker.disconnect()


def run() -> None:
    """Entry point: read settings from the environment and serve."""
    settings = Settings.from_environ(os.environ)
    configure(settings.log_level, settings.log_format)
    if settings.embedded:
        logger.info("embedded default: SQLite at %s, in-memory broker", settings.database_url)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvicorn[standard] brings it; plain asyncio works too
        pass
    asyncio.run(main(settings))


if __name__ == "__main__":
    run()
