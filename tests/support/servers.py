"""Run the app under a real uvicorn: in-process (a task) or as a ``python -m server`` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette

from server.settings import WS_IMPLEMENTATIONS, Settings

ROOT = Path(__file__).resolve().parents[2]

#: A test's HTTP client drops an idle connection after 1 s, well before uvicorn's 5 s keep-alive
#: closes it: with equal limits a request could go out on a connection the server was closing
#: and fail with ReadError (seen under load).
IDLE_BEFORE_SERVER = httpx.Limits(keepalive_expiry=1.0)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    """A server under test: its base URLs and (in-process) the uvicorn Server."""

    http: str
    ws: str
    server: uvicorn.Server | None = None
    process: subprocess.Popen[bytes] | None = None


@contextlib.asynccontextmanager
async def serve_in_process(app: Starlette, **config: object) -> AsyncIterator[Running]:
    """Serve ``app`` with uvicorn on a pre-bound free port in this event loop."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, object] = {
        "lifespan": "on",
        "log_level": "warning",
        # WS_IMPL in the test run's environment picks another implementation, as for a server.
        "ws": WS_IMPLEMENTATIONS[os.environ.get("WS_IMPL", Settings().ws_impl)],
        "ws_ping_interval": 20.0,
        "timeout_graceful_shutdown": 5,
    }
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("server exited before it started")
                await asyncio.sleep(0.02)
        yield Running(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", server=server)
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(30):
                await task
        finally:
            sock.close()


@contextlib.asynccontextmanager
async def serve_subprocess(
    env: Mapping[str, str], *, module: str = "server", port: int | None = None
) -> AsyncIterator[Running]:
    """Run ``python -m <module>`` with ``env`` on a free port; SIGTERM and wait on exit."""
    port = port or free_port()
    full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "LOG_FORMAT": "text", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL
    )
    running = Running(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", process=process)
    try:
        if module != "reconciler":  # the web process or its test variants
            await wait_ready(running.http, process)
        yield running
    finally:
        stop_process(process)


async def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until /healthz answers (or the process dies)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if (await client.get(base + "/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{base} not up after {timeout}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM, wait, and SIGKILL if it will not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode
