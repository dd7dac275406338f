"""The async engine, session factories and migrate-on-start.

SQLite: WAL with ``synchronous=FULL`` (a commit is on disk before it returns, so a 2xx survives
power loss; SQLITE_SYNCHRONOUS=NORMAL trades that away), busy timeout, foreign keys, and writes
that take the write lock up front (``BEGIN IMMEDIATE``) so two writers queue instead of failing
with "database is locked".
PostgreSQL: an asyncpg pool; writes lock rows explicitly (see ``writes.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from orders.hooks import NO_HOOKS, Hooks

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Arbitrary constant: the PostgreSQL advisory lock that serialises concurrent migrators.
_MIGRATION_LOCK = 7_311_953_001
#: The SQLite ``synchronous`` levels we allow: FULL (durable, the default) or NORMAL (faster).
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


class CommitOutcomeUnknown(Exception):
    """The connection was lost during COMMIT: the change may or may not have been applied."""


class StatementFailed(Exception):
    """A statement sent on the driver connection itself failed; its transaction did not commit."""


class Database:
    """Engine plus two session factories: ``write`` (locks for writing) and ``snapshot``."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        echo: bool = False,
        sqlite_synchronous: str = "FULL",
        command_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        hooks: Hooks = NO_HOOKS,
    ) -> None:
        self._hooks = hooks
        if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise ValueError(
                f"sqlite_synchronous: expected FULL or NORMAL, got {sqlite_synchronous!r}"
            )
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        options: dict[str, Any] = {
            "echo": echo,
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
        }
        if self.dialect == "sqlite":
            _ensure_sqlite_dir(url)
            options["connect_args"] = {"timeout": 30}
        else:
            # No pre-ping: it costs a round trip per checkout; a dead connection fails its
            # statement, SQLAlchemy discards it, and the caller's request fails or retries.
            options.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
            # A partitioned database is silence, not a refusal: without a bound every request
            # would wait for as long as the partition lasts. Past it asyncpg gives up (and the
            # caller answers 503) — so no legitimate statement may take this long.
            options["connect_args"] = {
                "command_timeout": command_timeout,
                "timeout": connect_timeout,
            }
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, synchronous=sqlite_synchronous)
            write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
            snapshot_engine = self.engine
        else:
            write_engine = self.engine
            # One snapshot for several reads: the hello's orders and head_seq agree.
            snapshot_engine = self.engine.execution_options(isolation_level="REPEATABLE READ")
        self.write = async_sessionmaker(write_engine, expire_on_commit=False)
        self.snapshot = async_sessionmaker(snapshot_engine, expire_on_commit=False)
        self.read = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        """Whether this is PostgreSQL (row locks, SKIP LOCKED) rather than SQLite."""
        return self.dialect == "postgresql"

    async def ping(self) -> None:
        """Run a trivial query; raises if the database is unreachable."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write session inside one transaction, committed on exit.

        An error before the COMMIT means nothing was written. The COMMIT itself failing because
        the connection was lost raises :class:`CommitOutcomeUnknown` instead: the server may
        have committed just before the connection went, and nobody here can tell.
        """
        async with self.write() as session:
            transaction = await session.begin()
            try:
                yield session
            except BaseException:
                try:
                    await transaction.rollback()
                except Exception:
                    # The original error matters more; a dead connection cannot roll back.
                    logger.debug("rollback after a failed transaction failed too", exc_info=True)
                raise
            await self._hooks.before_commit(session)
            try:
                await transaction.commit()
            except DBAPIError as exc:
                if _connection_lost(exc):
                    raise CommitOutcomeUnknown(str(exc.orig)) from exc
                raise
            except (TimeoutError, OSError) as exc:
                # The COMMIT was sent and no answer came in time: it may have landed.
                raise CommitOutcomeUnknown(f"no answer to COMMIT: {exc!r}") from exc


#: SQLSTATEs that mean the connection itself went away (class 08; the server shutting down).
_LOST = ("08", "57P01", "57P02", "57P03")


def _connection_lost(exc: DBAPIError) -> bool:
    """Whether ``exc`` says the connection died, rather than the database refusing the work."""
    if exc.connection_invalidated:
        return True
    for error in (exc.orig, getattr(exc.orig, "__cause__", None)):
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_LOST):
            return True
    return False


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _ensure_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: AsyncEngine, *, synchronous: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (pysqlite's implicit BEGIN cannot be IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL syncs only at checkpoints: a commit acknowledged since the last
        # one can vanish with a power cut or an OS crash. FULL syncs the WAL on every commit.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def alembic_config(url: str) -> Any:
    """An Alembic Config pointing at our migrations and ``url``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def _upgrade_sync(url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(url), "head")


async def migrate(url: str) -> None:
    """Bring the schema to the newest migration (serialised across processes on PostgreSQL)."""
    if make_url(url).get_backend_name() == "postgresql":
        engine = create_async_engine(url, pool_size=1, max_overflow=0)
        try:
            async with engine.connect() as conn:
                await conn.execute(text(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})"))
                try:
                    await asyncio.to_thread(_upgrade_sync, url)
                finally:
                    await conn.execute(text(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})"))
                    await conn.commit()
        finally:
            await engine.dispose()
    else:
        _ensure_sqlite_dir(url)
        await asyncio.to_thread(_upgrade_sync, url)
