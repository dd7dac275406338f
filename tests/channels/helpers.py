"""Helpers for the channels tests: waiting with a bound, and a private redis-server process."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Callable
from typing import Any, NoReturn

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from channels import Gap, Message
from channels.base import SubscriptionLike
from tests.support.ci import IN_CI

#: The shared Redis every test may use (with its own channel prefix); TEST_REDIS_URL moves it.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Every receive waits at most this long; a bound that catches hangs, not a speed assertion.
TIMEOUT = 5.0


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI, where a missing service is a broken setup."""
    if IN_CI:
        pytest.fail(f"{reason} (under CI this fails instead of skipping)")
    pytest.skip(reason)


async def receive(subscription: SubscriptionLike, within: float = TIMEOUT) -> Message | Gap:
    """The next item of ``subscription``, failing the test after ``within`` seconds."""
    return await asyncio.wait_for(subscription.get(), within)


async def receive_message(subscription: SubscriptionLike, within: float = TIMEOUT) -> Message:
    """The next item of ``subscription``, which must be a Message."""
    item = await receive(subscription, within)
    assert isinstance(item, Message), item
    return item


async def wait_until(
    predicate: Callable[[], bool], *, within: float = TIMEOUT, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within}s waiting until {what or predicate!r}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server on its own port, which a test may kill and start again."""

    def __init__(self, port: int) -> None:
        """Prepare a server for ``port``; nothing runs until :meth:`start`."""
        executable = shutil.which("redis-server")
        if executable is None:
            unavailable("redis-server is not installed")
        self.executable = executable
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the server and wait until it answers PING."""
        assert self._process is None, "already running"
        self._process = await asyncio.create_subprocess_exec(
            self.executable,
            *("--port", str(self.port), "--save", "", "--appendonly", "no"),
            *("--bind", "127.0.0.1"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            if self._process.returncode is not None:
                pytest.fail(f"redis-server on port {self.port} exited at start")
            try:
                await self.command("PING")
            except (RedisError, OSError):
                if loop.time() > deadline:
                    pytest.fail(f"redis-server on port {self.port} did not start")
                await asyncio.sleep(0.02)
            else:
                return

    async def kill(self) -> None:
        """SIGKILL the server (no clean shutdown) and reap it."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def command(self, *args: Any) -> Any:
        """Run one command on a fresh connection to the server."""
        async with aioredis.Redis.from_url(
            self.url, socket_connect_timeout=1, socket_timeout=TIMEOUT
        ) as client:
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]
