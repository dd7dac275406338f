"""The Procfile processes as a user runs them: python -m reconciler / server, and their logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from channels import Message, create_broker
from orders.db import Database
from orders.metrics import Metrics
from orders.workflow import OrderStatus
from orders.writes import Actor, Publisher, change_order_status
from tests.conftest import Backend
from tests.support.clients import SECRET, auth, order_body, recv_json, token
from tests.support.servers import ROOT, free_port, serve_subprocess, stop_process, wait_ready


async def wait_for_line(log: Path, text: str, *, timeout: float) -> None:
    """Until ``text`` appears in the file ``log`` (AssertionError after ``timeout`` s)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while text not in await asyncio.to_thread(log.read_text, errors="replace"):
        assert asyncio.get_running_loop().time() < deadline, f"{log.name}: no {text!r}"
        await asyncio.sleep(0.05)


async def test_python_m_reconciler_publishes_what_a_dead_writer_left_unpublished(
    pg_backend: Backend, tmp_path: Path
) -> None:
    async with serve_subprocess(pg_backend.env()) as web, httpx.AsyncClient(timeout=10) as http:
        created = await http.post(
            f"{web.http}/api/orders", json=order_body(), headers=auth(token("xena"))
        )
        order_id = created.json()["order"]["id"]
    db = Database(pg_backend.database_url, pool_size=1)
    broker = create_broker(pg_backend.redis_url)
    await broker.connect()
    try:
        metrics = Metrics()
        dead = Publisher(db, create_broker(None), prefix=pg_backend.prefix, metrics=metrics)
        await change_order_status(
            db, dead, metrics, order_id=order_id, to=OrderStatus.PREPARING, actor=Actor.system()
        )
        async with broker.subscribe(pg_backend.prefix + "customer:xena") as sub:
            env = {
                **os.environ,
                **pg_backend.env(RELAY_GRACE="0.2", RELAY_INTERVAL="0.2", LOG_LEVEL="INFO"),
            }
            logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
            workers = []
            for log in logs:
                with log.open("wb") as stderr:  # the child keeps its own copy of the descriptor
                    workers.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "reconciler"], cwd=ROOT, env=env, stderr=stderr
                        )
                    )
            try:
                item = await asyncio.wait_for(sub.get(), 20)
                assert isinstance(item, Message) and item.data.startswith("2 ")
                # Stop each worker only once it runs: a SIGTERM that lands while the interpreter
                # is still importing takes the default action (-15), not the worker's handler.
                for log in logs:
                    await wait_for_line(log, "reconciling payments of", timeout=20)
            finally:
                for worker in workers:
                    stop_process(worker)
            assert [w.returncode for w in workers] == [0, 0]
    finally:
        await broker.disconnect()
        await db.dispose()


def test_python_m_reconciler_refuses_to_run_without_a_shared_broker() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "reconciler"],
        cwd=ROOT,
        env={**env, "JWT_SECRET": "x"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "REDIS_URL" in result.stderr


def test_a_bad_setting_stops_the_server_with_the_variables_name() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": "localhost:6379"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "REDIS_URL: expected redis:// or rediss://, got 'localhost:6379'" in result.stderr


async def test_tokens_in_ws_urls_never_reach_the_logs(tmp_path: Path) -> None:
    port = free_port()
    secret_token = token("yuri")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/logs.db",
        "JWT_SECRET": SECRET,
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}", process)
        async with connect(f"ws://127.0.0.1:{port}/ws?token={secret_token}") as ws:
            assert (await recv_json(ws))["type"] == "hello"
        async with httpx.AsyncClient(timeout=5) as http:
            await http.get(f"http://127.0.0.1:{port}/api/orders", headers=auth(secret_token))
            await http.get(f"http://127.0.0.1:{port}/api/events?token={secret_token}")
    finally:
        stop_process(process)
    assert process.stdout is not None
    with process.stdout:
        output = process.stdout.read().decode()
    assert "/ws?token=[redacted]" in output, output[-2000:]
    assert secret_token not in output
    assert secret_token.split(".")[2] not in output
