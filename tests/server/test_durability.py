"""SQLite is durable by default: every commit is synced (synchronous=FULL) unless told not to."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from orders.db import Database
from server.settings import Settings

#: What ``PRAGMA synchronous`` reads back as.
_LEVELS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


async def synchronous_levels(db: Database) -> set[str]:
    """The synchronous level of a write, a snapshot and a read connection of ``db``."""
    levels = set()
    for sessions in (db.write, db.snapshot, db.read):
        async with sessions() as session:
            levels.add(
                _LEVELS[int((await session.execute(text("PRAGMA synchronous"))).scalar_one())]
            )
    return levels


async def test_sqlite_connections_sync_every_commit_by_default(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    try:
        assert await synchronous_levels(db) == {"FULL"}
    finally:
        await db.dispose()


async def test_sqlite_synchronous_normal_is_used_only_when_set(tmp_path: Path) -> None:
    settings = Settings.from_environ({"SQLITE_SYNCHRONOUS": "normal"})
    assert settings.sqlite_synchronous == "NORMAL"
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/d.db", sqlite_synchronous="NORMAL")
    try:
        assert await synchronous_levels(db) == {"NORMAL"}
    finally:
        await db.dispose()


def test_the_default_setting_is_full_and_other_levels_are_refused() -> None:
    assert Settings.from_environ({}).sqlite_synchronous == "FULL"
    with pytest.raises(ValueError, match=r"^SQLITE_SYNCHRONOUS: expected FULL or NORMAL"):
        Settings.from_environ({"SQLITE_SYNCHRONOUS": "OFF"})
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        Database("sqlite+aiosqlite:///:memory:", sqlite_synchronous="OFF")
