"""A TCP proxy for fault injection: latency, dropped connections and a black hole, on command.

``Proxy(target_port)`` listens on a free port of 127.0.0.1 and forwards every connection to the
target. Faults:

- ``latency``: seconds added before each chunk is forwarded, in both directions;
- ``drop_all()``: reset every open connection at once (mid-query, mid-reply);
- ``black_hole()``: keep accepting and keep every connection open, but forward nothing (what a
  network partition or a stalled host looks like: no refusal, no reset, only silence). Bytes
  sent meanwhile are held back, as TCP's retransmissions would deliver them after the partition;
- ``cut_after(pattern)``: the next chunk a client sends that contains ``pattern`` is forwarded,
  then its connection is reset before the target's reply can come back (e.g. ``b"COMMIT"``: the
  commit lands, the client never hears so);
- ``heal()``: no latency, no black hole, nothing armed; held bytes flow again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client side, the target side, and the two pumps."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.target):
            if writer is not None:
                writer.transport.abort()


class Proxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port``, with faults on command."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.latency = 0.0
        self.port = 0
        self.connections_total = 0
        self.cuts = 0
        #: Chunks read from one side and held back by the black hole right now.
        self.held = 0
        self._cut_pattern: bytes | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        self.drop_all()
        tasks = [*self._handlers, *(pump for link in self._links for pump in link.pumps)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        """Connections open through the proxy right now."""
        return len(self._links)

    def url(self, url: str) -> str:
        """``url`` (a database or Redis URL naming the target's port) pointed at the proxy."""
        host, port = self.target
        needle = f"{host}:{port}"
        if needle not in url:
            raise ValueError(f"{url!r} does not name {needle}")
        return url.replace(needle, f"127.0.0.1:{self.port}", 1)

    def drop_all(self) -> int:
        """Reset every open connection; how many."""
        links = list(self._links)
        for link in links:
            link.abort()
        return len(links)

    def black_hole(self) -> None:
        """Accept and keep connections, forward nothing, until ``heal``."""
        self._flowing.clear()

    def cut_after(self, pattern: bytes) -> None:
        """Reset the connection that next sends ``pattern``, right after forwarding it."""
        self._cut_pattern = pattern

    def heal(self) -> None:
        """No latency, no black hole and no armed cut any more."""
        self.latency = 0.0
        self._cut_pattern = None
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        link = _Link(writer)
        self._links.add(link)
        self.connections_total += 1
        try:
            # Black-holed: the client's connection is up, but the target never hears of it.
            await self._flowing.wait()
            target_reader, link.target = await asyncio.open_connection(*self.target)
            link.pumps = [
                asyncio.create_task(self._pump(reader, link.target, link)),
                asyncio.create_task(self._pump(target_reader, writer, None)),
            ]
            # Either side closing or failing ends the link: the other side is reset with it.
            await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        except asyncio.CancelledError:
            # Stopped by __aexit__: end quietly (asyncio logs a connection callback that ends
            # cancelled as an error).
            pass
        finally:
            link.abort()
            for pump in link.pumps:
                pump.cancel()
            await asyncio.gather(*link.pumps, return_exceptions=True)
            self._links.discard(link)
            self._handlers.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: _Link | None
    ) -> None:
        """Copy ``reader`` to ``writer``; ``outbound`` is the link when this is client → target."""
        with contextlib.suppress(OSError):
            while data := await reader.read(65_536):
                if not self._flowing.is_set():
                    self.held += 1
                    try:
                        await self._flowing.wait()
                    finally:
                        self.held -= 1
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(data)
                await writer.drain()
                pattern = self._cut_pattern
                if outbound is not None and pattern is not None and pattern in data:
                    # On loopback the bytes are in the target's socket already; the reply is not.
                    self._cut_pattern = None
                    self.cuts += 1
                    outbound.abort()
                    return
