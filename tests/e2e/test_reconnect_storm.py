"""A reconnect storm loses and doubles nothing: 300 clients resume at once after a restart.

Correctness only (the time it takes is bench.reconnect_storm's to measure): a real
``python -m server`` on PostgreSQL + Redis holds 300 customers' sockets while a second web
process takes POS status changes the whole time; the first is SIGTERMed (every client gets
1012), started again, and every client reconnects at once with ``since``. Each client's
sequence must then be contiguous up to its stream's head in the database.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import common
from bench.reconnect_storm import storm
from tests.conftest import Backend


async def test_three_hundred_clients_resume_at_once_after_a_restart_losing_and_doubling_nothing(
    pg_backend: Backend, tmp_path: Path
) -> None:
    env = pg_backend.env(JWT_SECRET=common.SECRET, WS_MAX_CONNECTIONS_PER_USER="4")
    hub = common.ServerProcess(env=env, cpu=None, log_path=tmp_path / "hub.log")
    writer = common.ServerProcess(env=env, cpu=None, log_path=tmp_path / "writer.log")
    try:
        hub.start()
        writer.start()
        await hub.wait_ready()
        await writer.wait_ready()

        async def stop() -> None:
            await asyncio.to_thread(hub.stop, 30.0)

        async def start() -> None:
            hub.start()
            await hub.wait_ready()

        async with asyncio.timeout(150):
            result = await storm(
                port=hub.port,
                writer_port=writer.port,
                database_url=pg_backend.database_url,
                stop=stop,
                start=start,
                tokens=common.token,
                customers=300,
                rate=100.0,
                before=1.5,
                after=2.0,
                concurrency=300,
                log=lambda line: None,
            )
    finally:
        hub.stop()
        writer.stop()
    assert result.open_errors == {}
    assert result.close_codes == {"1012": 300}, hub.log_tail()
    assert result.resumed_seconds is not None
    # The writes went on through the restart, all of them answered by the other process.
    assert result.writes["answered"] == result.writes["posted"] > 100
    assert result.writes["http_errors"] == {}
    assert result.events >= result.writes["posted"]
    assert (result.lost, result.doubled, result.resets, result.behind_at_end) == (0, 0, 0, 0), (
        result.problems
    )
