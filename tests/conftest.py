"""The backend matrix (sqlite+memory, postgres+redis), a fresh database per test, servers, tokens.

Under CI (any truthy CI value: true, 1, yes) an unreachable PostgreSQL or Redis fails the run;
elsewhere those tests skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from channels import Broker, create_broker
from orders.db import Database, migrate
from orders.hooks import NO_HOOKS, Hooks
from orders.metrics import Metrics
from orders.writes import Publisher
from reconciler.relay import Relay
from server.app import BackgroundJob, create_app
from server.services import Services
from server.settings import Settings
from tests.channels.cluster_helpers import LocalCluster
from tests.channels.helpers import RedisServer, free_port
from tests.support.ci import IN_CI
from tests.support.clients import SECRET
from tests.support.servers import IDLE_BEFORE_SERVER, Running, serve_in_process

PG_DSN = os.environ.get("TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_HOST = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# One template per test session (pid), so concurrent runs on one PostgreSQL never drop each
# other's template while it is being cloned.
TEMPLATE_DB = f"orderstatus_test_template_{os.getpid()}"

_state: dict[str, Any] = {}


def unavailable(what: str, exc: BaseException) -> None:
    """Fail under CI, skip elsewhere."""
    message = f"{what} unreachable: {exc!r}"
    if IN_CI:
        pytest.fail(f"{message} (under CI a missing backend is a failure)", pytrace=False)
    pytest.skip(message)


async def _pg_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL", exc)
        raise


async def _pg_template() -> None:
    """Create and migrate the template database once per test session."""
    if _state.get("pg_ready"):
        return
    conn = await _pg_admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    await migrate(f"{PG_HOST}/{TEMPLATE_DB}")
    _state["pg_ready"] = True


@pytest.fixture(scope="session", autouse=True)
def _drop_pg_template() -> Iterator[None]:
    """Drop this session's template database when the session ends (if one was made)."""
    yield
    if not _state.get("pg_ready"):
        return

    async def drop() -> None:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


async def _redis_check() -> None:
    if _state.get("redis_ready"):
        return
    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        unavailable("Redis", exc)
    finally:
        await client.aclose()
    _state["redis_ready"] = True


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A new PostgreSQL database cloned from the migrated template; dropped afterwards."""
    await _pg_template()
    name = f"orderstatus_t_{secrets.token_hex(6)}"
    conn = await _pg_admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    try:
        yield f"{PG_HOST}/{name}"
    finally:
        conn = await _pg_admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@dataclass
class Backend:
    """One cell of the matrix: where the database and the broker are."""

    name: str
    database_url: str
    redis_url: str | None
    prefix: str = field(default_factory=lambda: f"t{secrets.token_hex(4)}:")

    def settings(self, **overrides: Any) -> Settings:
        """Settings for a test app on this backend."""
        base = Settings(
            database_url=self.database_url,
            redis_url=self.redis_url,
            redis_channel_prefix=self.prefix,
            jwt_secret=SECRET,
            demo_tokens=False,
            migrate_on_start=self.name == "sqlite",
            relay_in_process=False,
            log_format="text",
        )
        return replace(base, **overrides)

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment variables for a ``python -m server`` subprocess on this backend."""
        env = {
            "DATABASE_URL": self.database_url,
            "REDIS_CHANNEL_PREFIX": self.prefix,
            "JWT_SECRET": SECRET,
            "DEMO_TOKENS": "false",
            "LOG_LEVEL": "WARNING",
        }
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        env.update(overrides)
        return env


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each test runs on SQLite + the in-memory broker, then on PostgreSQL + Redis."""
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path}/orderstatus.db", None)
        return
    await _redis_check()
    async with fresh_pg_database() as url:
        yield Backend("postgres", url, REDIS_URL)


@pytest.fixture
async def pg_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """PostgreSQL + Redis only (multi-process and outage tests)."""
    await _redis_check()
    async with fresh_pg_database() as url:
        yield Backend("postgres", url, REDIS_URL)


@pytest.fixture
async def private_redis() -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and restart."""
    server = RedisServer(free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A local Redis Cluster (3 masters + 3 replicas) shared by the session; tests only add
    channels to it (with their own prefix). Missing redis-server: skip, or fail under CI."""
    cluster = LocalCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def private_redis_cluster() -> Iterator[LocalCluster]:
    """A Redis Cluster of this test's own, whose masters it may kill or reshard."""
    cluster = LocalCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Service:
    """A running app under test: URLs, an HTTP client, and handles on its parts."""

    running: Running
    http: httpx.AsyncClient
    settings: Settings
    broker: Broker
    metrics: Metrics
    db: Database
    publisher: Publisher
    #: The app's own Services (its settlement, hub, ...), once its lifespan has started.
    inside: list[Services] = field(default_factory=list)

    @property
    def services(self) -> Services:
        """The running app's Services."""
        assert self.inside, "the app's lifespan has not started its background jobs yet"
        return self.inside[0]

    @property
    def ws_url(self) -> str:
        return self.running.ws + "/ws"


StartService = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start_service(backend: Backend) -> AsyncIterator[StartService]:
    """Start the app in-process on this test's backend; ``relay=True`` runs the outbox relay too,
    ``hooks`` installs test pause points (server/hooks.py)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            *,
            relay: bool = False,
            broker: Broker | None = None,
            owns_broker: bool = False,
            hooks: Hooks = NO_HOOKS,
            **overrides: Any,
        ) -> Service:
            settings = backend.settings(**overrides)
            if broker is None:
                broker = create_broker(settings.redis_url)
                owns_broker = True
            if owns_broker:
                # Connected here and disconnected after the service has stopped.
                await broker.connect()
                stack.push_async_callback(broker.disconnect)
            metrics = Metrics()
            inside: list[Services] = []

            async def capture(services: Services, stop: asyncio.Event) -> None:
                inside.append(services)
                await stop.wait()

            background: list[BackgroundJob] = [capture]
            if relay:

                async def run_relay(services: Services, stop: asyncio.Event) -> None:
                    await Relay(
                        services.db,
                        services.publisher,
                        services.metrics,
                        grace=settings.relay_grace,
                        interval=0.2,
                    ).run(stop)

                background.append(run_relay)
            app = create_app(
                settings, broker=broker, metrics=metrics, background=background, hooks=hooks
            )
            # The test's own connection pool outlives the app: a test's hooks may use it inside
            # the app's transactions, up to the app's last (its shutdown's), so it is disposed
            # after the server stopped — disposed first, a connection still out would be
            # returned to the discarded pool and never closed (an unclosed aiosqlite connection).
            db = Database(settings.database_url, pool_size=4)
            stack.push_async_callback(db.dispose)
            running = await stack.enter_async_context(
                serve_in_process(
                    app,
                    ws_max_size=settings.ws_max_message_bytes,
                    ws_per_message_deflate=settings.ws_per_message_deflate,
                )
            )
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=running.http, timeout=10, limits=IDLE_BEFORE_SERVER)
            )
            publisher = Publisher(db, broker, prefix=settings.redis_channel_prefix, metrics=metrics)
            return Service(running, http, settings, broker, metrics, db, publisher, inside)

        yield start


@pytest.fixture
async def service(start_service: StartService) -> Service:
    """The app with default test settings on this test's backend."""
    return await start_service()
