"""`python -m server`: the web process (on the embedded default also the relay and reconciler)."""

from __future__ import annotations

import asyncio
import logging
import os

import uvicorn

from server.app import BackgroundJob, create_app
from server.logs import configure, uvicorn_log_config
from server.services import Services
from server.settings import WS_IMPLEMENTATIONS, Settings

logger = logging.getLogger("server")


def _relay_job(settings: Settings) -> BackgroundJob:
    # The only place the server starts reconciler code: the embedded single-process setup.
    from reconciler.relay import Relay

    async def run(services: Services, stop: asyncio.Event) -> None:
        relay = Relay(
            services.db,
            services.publisher,
            services.metrics,
            grace=settings.relay_grace,
            interval=settings.relay_interval,
            retention=settings.retention,
        )
        await relay.run(stop)

    return run


def _reconciler_job(settings: Settings) -> BackgroundJob:
    from reconciler.worker import Reconciler

    async def run(services: Services, stop: asyncio.Event) -> None:
        reconciler = Reconciler(
            services.settlement,
            interval=settings.reconciler_interval,
            batch=settings.reconciler_batch,
            concurrency=settings.reconciler_concurrency,
        )
        await reconciler.run(stop)

    return run


def build_config(settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration for ``settings`` (ping, size limits, graceful shutdown)."""
    background = [_relay_job(settings)] if settings.relay_enabled else []
    if settings.reconciler_enabled:
        background.append(_reconciler_job(settings))
    return uvicorn.Config(
        create_app(settings, background=background),
        host=settings.host,
        port=settings.port,
        ws=WS_IMPLEMENTATIONS[settings.ws_impl],
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_timeout),
        log_config=uvicorn_log_config(),
        lifespan="on",
        proxy_headers=True,
    )


def run() -> None:
    """Entry point: read settings from the environment, migrate if asked, and serve."""
    settings = Settings.from_environ(os.environ)
    configure(settings.log_level, settings.log_format)
    if settings.embedded:
        logger.info("embedded default: SQLite at %s, in-memory broker", settings.database_url)
    # SIGTERM/SIGINT: uvicorn stops accepting, closes sockets with 1012, waits for requests up
    # to GRACEFUL_SHUTDOWN_TIMEOUT, runs the lifespan shutdown, then exits by that signal.
    uvicorn.Server(build_config(settings)).run()


if __name__ == "__main__":
    run()
