"""Reconnect storm: N connected customers, the server restarts, every one resumes at once.

    python -m bench.reconnect_storm --customers 10000 --rate 100

The hub under test (``python -m server``, pinned to one core) holds N customers' sockets, each
opened fresh (hello with a snapshot). A second web process on the same PostgreSQL and Redis
takes the POS status changes at ``--rate`` per second throughout, so writes never stop while
the first restarts. Then: SIGTERM the hub (every client must get 1012), start it again, and as
soon as its port accepts, every client reconnects at once with ``since`` and ``epoch``.
Reported: the time from "accepting" until every client had its hello (resumed) and until every
client had caught up to the log's head, and — after the writes end and the sockets drain —
each client's sequence checked against the database: events lost (a seq never received, or
the head not reached) and doubled (a seq received twice) must both be 0, and no client reset.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from bench import common, e2e


@dataclass
class Client:
    """One customer's socket, across the restart: what it was told and what it received."""

    name: str
    token: str
    ws: common.WsClient | None = None
    epoch: str | None = None
    last: int | None = None  # the newest seq this client has; None before its first hello
    hellos: int = 0
    resets: int = 0
    events: int = 0
    missed: int = 0  # seqs skipped over (a jump past last + 1)
    doubled: int = 0
    hello_at: float | None = None

    def on_text(self, payload: bytes) -> None:
        """Follow the stream: a hello places the client, events must follow in seq order."""
        message = orjson.loads(payload)
        kind = message["type"]
        if kind == "event":
            seq = message["seq"]
            if self.last is not None and seq <= self.last:
                self.doubled += 1
                return
            if self.last is not None and seq != self.last + 1:
                self.missed += seq - self.last - 1
            self.last = seq
            self.events += 1
        elif kind == "hello":
            self.hellos += 1
            self.epoch = message["epoch"]
            if self.last is None:  # a resume's hello keeps the position: the replay follows
                self.last = message["head_seq"]
            self.hello_at = time.monotonic()
        elif kind == "reset":
            self.resets += 1
            self.epoch = message["epoch"]
            self.last = message["head_seq"]
            self.hello_at = time.monotonic()


@dataclass
class StormResult:
    """What one storm measured (every duration in seconds)."""

    customers: int
    open_seconds: float
    open_errors: dict[str, int]
    close_codes: dict[str, int]
    stop_seconds: float
    start_seconds: float
    resumed_seconds: float | None
    caught_up_seconds: float | None
    resume_errors: dict[str, int]
    writes: dict[str, Any]
    events: int
    lost: int
    doubled: int
    resets: int
    behind_at_end: int
    problems: list[str] = field(default_factory=list)
    #: CPU % of one core while opening / resuming: the hub's and this load generator's.
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


async def connect_all(
    port: int, clients: list[Client], *, resume: bool, concurrency: int
) -> Counter[str]:
    """Open a socket per client (``since`` and ``epoch`` when resuming); errors by reason."""
    errors: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(client: Client) -> None:
        path = "/ws"
        if resume and client.last is not None:
            path += f"?since={client.last}" + (f"&epoch={client.epoch}" if client.epoch else "")
        async with gate:
            for attempt in range(20):
                try:
                    client.ws = await common.ws_connect(
                        port, client.token, client.on_text, path=path
                    )
                    return
                except (OSError, TimeoutError, common.WsError) as exc:
                    errors[str(exc)[:80] or type(exc).__name__] += 1
                    await asyncio.sleep(0.05 * (attempt + 1))

    await asyncio.gather(*(one(client) for client in clients))
    return errors


async def wait_until(done: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``done()`` (polled every 10 ms), or None after ``timeout``."""
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            return None
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def wait_accepting(port: int, timeout: float = 60.0) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} not accepting after {timeout}s") from None
            await asyncio.sleep(0.005)
            continue
        writer.close()
        return


async def stream_heads(dsn: str) -> dict[str, int]:
    """Every stream's head seq, read from PostgreSQL directly."""
    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT name, head_seq FROM streams")
    finally:
        await conn.close()
    return {row["name"]: int(row["head_seq"]) for row in rows}


async def storm(
    *,
    port: int,
    writer_port: int,
    database_url: str,
    stop: Callable[[], Coroutine[Any, Any, None]],
    start: Callable[[], Coroutine[Any, Any, None]],
    tokens: Callable[[str], str],
    customers: int,
    rate: float,
    before: float,
    after: float,
    concurrency: int,
    drain: float = 15.0,
    log: Callable[[str], None] = print,
    server_pid: Callable[[], int | None] = lambda: None,
) -> StormResult:
    """Run one storm against a hub on ``port`` (restarted by ``stop``/``start``) while POS
    writes go to the web process on ``writer_port``."""
    names = [f"storm-{i:06d}" for i in range(customers)]
    clients = [Client(f"customer:{name}", tokens(name)) for name in names]
    cpu: dict[str, dict[str, float]] = {}
    meter = _Meter(server_pid)
    started = time.monotonic()
    open_errors = await connect_all(port, clients, resume=False, concurrency=concurrency)
    await wait_until(lambda: all(c.hellos for c in clients if c.ws is not None), 60)
    open_seconds = time.monotonic() - started
    cpu["open"] = meter.read()
    log(f"opened {customers:,} sockets (hello with a snapshot) in {open_seconds:.2f}s")

    # The writes: cash orders round-robin over the customers, then status changes at ``rate``.
    state = e2e._State()
    http = common.HttpPool("127.0.0.1", writer_port, connections=8)
    await http.open()
    writes_for = before + after + 10.0
    total = max(4, int(rate * writes_for))
    orders, _ = await e2e._create_orders(
        state, http, names, ["store-1"], max(1, (total + 3) // 4), 60.0
    )
    writing = asyncio.create_task(
        e2e._post_statuses(state, http, orders, rate, min(total, 4 * len(orders)), 60.0)
    )
    try:
        await asyncio.sleep(before)
        # The restart: every client must be told 1012 ("reconnect elsewhere").
        t0 = time.monotonic()
        await stop()
        stop_seconds = time.monotonic() - t0
        await wait_until(lambda: all(c.ws is None or c.ws.closed.done() for c in clients), 10)
        codes = Counter(str(c.ws.close_code) if c.ws else "never opened" for c in clients)
        log(f"stopped in {stop_seconds:.2f}s; close codes {dict(codes)}")
        t0 = time.monotonic()
        starting = asyncio.create_task(start())
        await wait_accepting(port)
        accepting = time.monotonic()
        start_seconds = accepting - t0
        for client in clients:
            client.hello_at = None
        meter = _Meter(server_pid)
        resume_errors = await connect_all(port, clients, resume=True, concurrency=concurrency)
        resumed = await wait_until(lambda: all(c.hello_at is not None for c in clients), 60)
        cpu["resume"] = meter.read()
        resumed_seconds = None
        if resumed is not None:
            resumed_seconds = max(c.hello_at or 0.0 for c in clients) - accepting
        heads = await stream_heads(database_url)
        caught = await wait_until(
            lambda: all((c.last or 0) >= heads.get(c.name, 0) for c in clients), 60
        )
        caught_up_seconds = None if caught is None else time.monotonic() - accepting
        await starting
        log(
            f"accepting {start_seconds:.2f}s after the start; all {customers:,} resumed"
            f" {resumed_seconds}s and caught up {caught_up_seconds}s after accepting"
        )
        writes = await writing
    finally:
        if not writing.done():
            writing.cancel()
        http.close()
    # The writes have all been answered; wait for their events to reach every socket.
    heads = await stream_heads(database_url)
    await wait_until(lambda: all((c.last or 0) >= heads.get(c.name, 0) for c in clients), drain)
    behind = [c for c in clients if (c.last or 0) < heads.get(c.name, 0)]
    lost = sum(c.missed for c in clients) + sum(
        heads.get(c.name, 0) - (c.last or 0) for c in behind
    )
    problems = [
        f"{c.name}: last {c.last}, head {heads.get(c.name, 0)}, missed {c.missed},"
        f" doubled {c.doubled}, resets {c.resets}"
        for c in clients
        if c in behind or c.missed or c.doubled or c.resets
    ][:20]
    for client in clients:
        if client.ws is not None:
            client.ws.close()
    writes["http_errors"] = dict(state.http_errors)
    return StormResult(
        customers=customers,
        open_seconds=open_seconds,
        open_errors=dict(open_errors),
        close_codes=dict(codes),
        stop_seconds=stop_seconds,
        start_seconds=start_seconds,
        resumed_seconds=resumed_seconds,
        caught_up_seconds=caught_up_seconds,
        resume_errors=dict(resume_errors),
        writes={k: v for k, v in writes.items() if k != "write_lateness"},
        events=sum(c.events for c in clients),
        lost=lost,
        doubled=sum(c.doubled for c in clients),
        resets=sum(c.resets for c in clients),
        behind_at_end=len(behind),
        problems=problems,
        cpu=cpu,
    )


class _Meter:
    """CPU % of one core used by the hub and by this process since it was made."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        self._pid = pid
        self._at = time.monotonic()
        self._mine = time.process_time()
        found = pid()
        self._server = common.cpu_seconds(found) if found else 0.0

    def read(self) -> dict[str, float]:
        """The percentages so far."""
        elapsed = max(time.monotonic() - self._at, 1e-9)
        found = self._pid()
        server = common.cpu_seconds(found) - self._server if found else 0.0
        return {
            "server": round(100 * server / elapsed, 1),
            "loadgen": round(100 * (time.process_time() - self._mine) / elapsed, 1),
        }


async def _bench(args: argparse.Namespace, server: common.ServerProcess) -> dict[str, Any]:
    database_url = await common.recreate_database(args.database)
    env = common.server_env(database_url, WS_MAX_CONNECTIONS_PER_USER="4", **dict(args.server_env))
    server.env = env
    writer = common.ServerProcess(
        env=env, cpu=args.loadgen_cpu, log_path=common.RESULTS / "storm-writer.log"
    )
    server.start()
    await server.wait_ready()
    writer.start()
    try:
        await writer.wait_ready()
        print(f"hub pid {server.pid} on cpu {args.server_cpu}; writer pid {writer.pid}", flush=True)

        async def stop() -> None:
            await asyncio.to_thread(server.stop, 60.0)

        async def start() -> None:
            server.start()
            await server.wait_ready()

        result = await storm(
            port=server.port,
            writer_port=writer.port,
            database_url=database_url,
            stop=stop,
            start=start,
            tokens=common.token,
            customers=args.customers,
            rate=args.rate,
            before=args.before,
            after=args.after,
            concurrency=args.concurrency,
            server_pid=lambda: server.pid if server.process is not None else None,
        )
    finally:
        writer.stop()
    return {"storm": result.__dict__, "server_log": server.log_tail(10)}


def _report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    s = r["storm"]
    print(
        common.table(
            [
                "customers",
                "opened in",
                "1012s",
                "accepting after",
                "all resumed",
                "caught up",
                "events",
                "lost",
                "doubled",
                "resets",
            ],
            [
                [
                    s["customers"],
                    f"{s['open_seconds']:.2f} s",
                    s["close_codes"].get("1012", 0),
                    f"{s['start_seconds']:.2f} s",
                    "–" if s["resumed_seconds"] is None else f"{s['resumed_seconds']:.2f} s",
                    "–" if s["caught_up_seconds"] is None else f"{s['caught_up_seconds']:.2f} s",
                    s["events"],
                    s["lost"],
                    s["doubled"],
                    s["resets"],
                ]
            ],
        )
    )
    print(f"writes: {s['writes']}")
    print(f"cpu % of one core (hub, this load generator): {s['cpu']}")
    if s["open_errors"] or s["resume_errors"]:
        print(f"connect errors: open {s['open_errors']}, resume {s['resume_errors']}")
    for line in s["problems"]:
        print("  " + line)


def main() -> None:
    """Parse the options and run one storm."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000, help="connected customers")
    parser.add_argument("--rate", type=float, default=100.0, help="POS status changes per second")
    parser.add_argument("--before", type=float, default=5.0, help="writes before the restart, s")
    parser.add_argument("--after", type=float, default=10.0, help="writes after it, s")
    parser.add_argument("--concurrency", type=int, default=1000, help="handshakes in flight")
    parser.add_argument("--server-cpu", default="0", help="taskset list for the hub")
    parser.add_argument("--loadgen-cpu", default="1", help="cpus for this client and the writer")
    parser.add_argument("--database", default="orderstatus_storm")
    parser.add_argument("--server-module", default="server")
    parser.add_argument(
        "--server-env", type=common.env_pair, action="append", default=[], help="NAME=VALUE"
    )
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard time limit")
    parser.add_argument("--json", help="also write the results here")
    common.run_bench(parser.parse_args(), _bench, _report)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
