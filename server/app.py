"""create_app(settings): the route table, middleware, and the lifespan that opens resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from channels import Broker, Heartbeat, create_broker
from orders.db import CommitOutcomeUnknown, Database, StatementFailed, migrate
from orders.errors import DomainError
from orders.groupcommit import GroupCommit
from orders.hooks import NO_HOOKS, Hooks
from orders.metrics import Metrics
from orders.payments import FailurePolicy
from orders.settlement import Settlement
from orders.writes import Publisher
from server.api import demo, events, ops, orders, pos, receipts, webhooks
from server.api import money as money_api
from server.api import payments as payments_api
from server.auth import TokenVerifier
from server.errors import (
    ApiError,
    handle_api_error,
    handle_commit_outcome_unknown,
    handle_database_error,
    handle_database_timeout,
    handle_domain_error,
    handle_http_exception,
    handle_unexpected,
)
from server.gatewaying import SANDBOX_MOUNT, in_process_sandbox, open_gateways
from server.gctune import GcPolicy
from server.hub import Hub
from server.idempotency import IdempotencyMiddleware
from server.logs import new_request_id, request_id
from server.ratelimit import GatewayRateLimiter
from server.services import Services
from server.settings import Settings

logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent.parent / "client-demo"


class _RequestContext:
    """Gives each request an id (X-Request-ID, echoed back) for the logs, and counts requests
    by endpoint and status. Pure ASGI, so it adds nothing to streaming or WebSockets."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else new_request_id()
        request_id.set(rid)
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = scope.get("endpoint")
            route = getattr(endpoint, "__qualname__", "unmatched") if endpoint else "unmatched"
            self.metrics.http_requests.labels(route=route, status=str(status)).inc()


BackgroundJob = Callable[[Services, asyncio.Event], Coroutine[Any, Any, None]]


def create_app(
    settings: Settings,
    *,
    broker: Broker | None = None,
    metrics: Metrics | None = None,
    background: Sequence[BackgroundJob] = (),
    hooks: Hooks = NO_HOOKS,
) -> Starlette:
    """Build the ASGI app; nothing connects until its lifespan starts.

    ``broker``: an already-connected broker to use instead of the one REDIS_URL names.
    ``background``: jobs run for the app's lifetime, each given the services and a stop event
    (``python -m server`` runs the outbox relay this way on the embedded default).
    ``hooks``: test-only pause points (server/hooks.py); the default does nothing.
    """
    settings.validate()
    metrics = metrics or Metrics()
    # Demo tokens get a per-process secret of their own, never the configured key.
    demo_secret = secrets.token_urlsafe(32) if settings.demo_tokens_enabled else None
    verifier = TokenVerifier.from_settings(settings, demo_secret=demo_secret)
    # Built now so its routes can be mounted; its webhook sender starts with the lifespan.
    sandbox = in_process_sandbox(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if settings.migrate_on_start:
            await migrate(settings.database_url)
        db = Database(
            settings.database_url,
            pool_size=settings.db_pool_size,
            sqlite_synchronous=settings.sqlite_synchronous,
            command_timeout=settings.db_command_timeout,
            connect_timeout=settings.db_connect_timeout,
            hooks=hooks,
        )
        own_broker = broker is None
        the_broker = broker or create_broker(settings.broker_url)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(db.dispose)
            if own_broker:
                await the_broker.connect()
                stack.push_async_callback(the_broker.disconnect)
            heartbeat = Heartbeat(
                the_broker,
                channel=f"{settings.redis_channel_prefix}_heartbeat:{settings.instance_id}",
                interval=settings.broker_heartbeat_interval,
                stale_after=settings.broker_heartbeat_stale_after,
            )
            await stack.enter_async_context(heartbeat)
            publisher = await stack.enter_async_context(
                Publisher(
                    db,
                    the_broker,
                    prefix=settings.redis_channel_prefix,
                    metrics=metrics,
                    hooks=hooks,
                    queue_size=settings.publish_queue_size,
                )
            )
            offered = await stack.enter_async_context(open_gateways(settings, sandbox))
            settlement = Settlement(
                db,
                publisher,
                metrics,
                gateways=offered.gateways,
                schedules=offered.schedules,
                policy=FailurePolicy(settings.payment_failure_policy),
                receipt_tax_rate_bp=settings.receipt_tax_rate_bp,
                hooks=hooks,
                limiter=await stack.enter_async_context(
                    GatewayRateLimiter(
                        {name: settings.rate_limit(name) for name in offered.gateways},
                        redis_url=settings.redis_url,
                        prefix=settings.redis_channel_prefix,
                        metrics=metrics,
                    )
                ),
            )
            writer = GroupCommit(
                db,
                publisher,
                metrics,
                max_batch=settings.group_commit_max_batch,
                max_queued=settings.group_commit_max_queued,
                lanes=settings.group_commit_lanes,
                hooks=hooks,
            )
            stack.push_async_callback(writer.close)
            hub = Hub(
                db=db,
                broker=the_broker,
                heartbeat=heartbeat,
                verifier=verifier,
                settings=settings,
                metrics=metrics,
                hooks=hooks,
            )
            metrics.watch_gc()
            stack.callback(metrics.unwatch_gc)
            poller = asyncio.create_task(hub.run_poller(), name="hub-poller")
            stack.push_async_callback(_cancel, poller)
            if settings.gc_freeze:
                policy = GcPolicy(
                    opened_total=lambda: hub.opened_total, thaw_interval=settings.gc_thaw_interval
                )
                gc_task = asyncio.create_task(policy.run(), name="gc-policy")
                stack.push_async_callback(_cancel, gc_task)
            stack.push_async_callback(hub.shutdown)
            services = Services(
                settings=settings,
                db=db,
                broker=the_broker,
                heartbeat=heartbeat,
                publisher=publisher,
                verifier=verifier,
                hub=hub,
                metrics=metrics,
                settlement=settlement,
                writer=writer,
            )
            stop = asyncio.Event()
            for job in background:
                task = asyncio.create_task(job(services, stop))
                stack.push_async_callback(_stop_job, task, stop, settings.graceful_shutdown_timeout)
            logger.info(
                "orderstatus ready: database=%s broker=%s instance=%s gateways=%s",
                db.dialect,
                (settings.broker_url or "memory").partition("://")[0].replace("+", "-"),
                settings.instance_id,
                ",".join(sorted(offered.gateways)) or "none",
            )
            if verifier.mints_demo_tokens:
                logger.warning(
                    "DEMO_TOKENS is on: anyone who can reach POST /demo/token can mint a customer"
                    " or POS token for any identity (signed with a per-process demo secret%s);"
                    " never run it like this in production",
                    ", alongside the configured JWT key"
                    if settings.jwt_secret or settings.jwt_public_key
                    else "",
                )
            yield {"services": services}

    routes: list[Any] = [
        Route("/api/orders", orders.create, methods=["POST"]),
        Route("/api/orders", orders.list_mine, methods=["GET"]),
        Route("/api/orders/{order_id}", orders.get_one, methods=["GET"]),
        Route("/api/orders/{order_id}/events", orders.audit_trail, methods=["GET"]),
        Route("/api/orders/{order_id}/cancel", orders.cancel, methods=["POST"]),
        Route("/api/orders/{order_id}/payments", payments_api.start, methods=["POST"]),
        Route("/api/orders/{order_id}/payments/verify", payments_api.verify, methods=["POST"]),
        Route("/api/orders/{order_id}/refunds", money_api.request_refund, methods=["POST"]),
        Route("/api/orders/{order_id}/receipts", receipts.list_receipts, methods=["GET"]),
        # Before the JSON route, whose {number} would also match "1.html".
        Route(
            "/api/orders/{order_id}/receipts/{number}.html",
            receipts.get_receipt_html,
            methods=["GET"],
        ),
        Route("/api/orders/{order_id}/receipts/{number}", receipts.get_receipt, methods=["GET"]),
        Route("/webhooks/{gateway}", webhooks.receive, methods=["POST"]),
        Route("/api/pos/orders", pos.list_store, methods=["GET"]),
        Route("/api/pos/orders/{order_id}/status", pos.set_status, methods=["POST"]),
        Route(
            "/api/pos/orders/{order_id}/payments",
            money_api.record_manual_payment,
            methods=["POST"],
        ),
        Route("/api/events", events.stream_events, methods=["GET"]),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"], include_in_schema=False),
        Route("/openapi.json", ops.openapi, methods=["GET"], include_in_schema=False),
        WebSocketRoute("/ws", _ws_endpoint),
    ]
    # Always routed (the static /demo mount would otherwise answer 405); 404 when disabled.
    routes.append(Route("/demo/token", demo.mint_token, methods=["POST"]))
    if sandbox is not None:
        routes.append(Mount(SANDBOX_MOUNT, app=sandbox.app, name="sandbox"))
    if DEMO_DIR.is_dir():
        routes.append(Mount("/demo", StaticFiles(directory=DEMO_DIR, html=True), name="demo"))

    return _App(
        routes=routes,
        # Idempotency inside the request context, so a replayed answer carries X-Request-ID.
        middleware=[
            Middleware(_RequestContext, metrics=metrics),
            Middleware(IdempotencyMiddleware, hooks=hooks),
        ],
        exception_handlers={
            ApiError: handle_api_error,
            DomainError: handle_domain_error,
            HTTPException: handle_http_exception,
            CommitOutcomeUnknown: handle_commit_outcome_unknown,
            DBAPIError: handle_database_error,
            StatementFailed: handle_database_error,
            SQLAlchemyTimeoutError: handle_database_error,
            # asyncpg's DB_COMMAND_TIMEOUT surfaces as a bare TimeoutError.
            TimeoutError: handle_database_timeout,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )


async def _ws_endpoint(websocket: Any) -> None:
    await websocket.state.services.hub.endpoint(websocket)


class _App(Starlette):
    """Starlette, with /ws served straight from the top.

    A WebSocket lives for hours, and every layer between the server and the hub (error
    middleware, our request context, exception middleware, router, route) stays suspended on
    its stack for all that time: about a dozen coroutine frames per connection, multiplied by
    10,000 connections. The route stays in the table (and behaves the same); only the walk to
    it is skipped.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            scope["app"] = self
            request_id.set(new_request_id())
            await _ws_endpoint(WebSocket(scope, receive, send))
            return
        await super().__call__(scope, receive, send)


async def _stop_job(task: asyncio.Task[None], stop: asyncio.Event, grace: float) -> None:
    stop.set()
    try:
        await asyncio.wait_for(task, grace)
    except TimeoutError:
        logger.warning(
            "background job %s did not stop within %.0fs; cancelled", task.get_name(), grace
        )
    except Exception:
        logger.exception("background job %s failed", task.get_name())


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
