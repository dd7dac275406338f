"""Pure fan-out: C connected customers, messages published straight into Redis at rising rates.

    python -m bench.fanout --customers 10000

The server runs on PostgreSQL + Redis, pinned to one core. Receivers (``--receivers`` processes,
lean protocol-level WebSocket clients) and the publisher (its own process, pipelined PUBLISHes)
run on the other core. Every message goes to a random connected customer's channel as
``"<seq> {"type":"event","seq":N,"t":<send time>,"s":<step>}"`` with a per-customer seq counter,
so the hub's cursor delivers it (a seq the hub does not expect would send it to the database).
Each step publishes at a fixed rate for a fixed time (open loop: batches every few ms, timed
from the start of the step); then the receivers drain and report latency (receipt time minus
send time), and the message counts are compared (loss, duplicates, order per connection).
CPU% of the server, the receivers, the publisher, Redis and PostgreSQL is sampled over each
publishing window, to show which side is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import multiprocessing
import os
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import orjson
import redis
from redis.crc import key_slot

from bench import common, profile

# -- receiver process --------------------------------------------------------------------------


class _Receivers:
    """The receiving side of one process: a slice of the customers, one socket each."""

    def __init__(self, port: int, customers: list[str]) -> None:
        self.port = port
        self.customers = customers
        self.clients: list[common.WsClient | None] = [None] * len(customers)
        self.last = [0] * len(customers)
        self.hello_seq: list[int | None] = [None] * len(customers)
        self.latency: dict[int, array[float]] = {}
        self.counts: Counter[int] = Counter()
        self.gaps = 0
        self.duplicates = 0
        self.connect_errors: Counter[str] = Counter()

    def handler(self, index: int) -> Callable[[bytes], None]:
        last = self.last
        loads = orjson.loads
        now = time.time

        def on_text(payload: bytes) -> None:
            received = now()
            message = loads(payload)
            kind = message["type"]
            if kind == "event":
                seq = message["seq"]
                previous = last[index]
                if seq == previous + 1:
                    last[index] = seq
                elif seq <= previous:
                    self.duplicates += 1
                    return
                else:
                    self.gaps += 1
                    last[index] = seq
                step = message["s"]
                samples = self.latency.get(step)
                if samples is None:
                    samples = self.latency[step] = array("d")
                samples.append(received - message["t"])
                self.counts[step] += 1
            elif kind in ("hello", "reset"):
                self.hello_seq[index] = message["head_seq"]
                last[index] = message["head_seq"]

        return on_text

    async def connect(self, concurrency: int, attempts: int) -> dict[str, Any]:
        """Connect every customer (retrying refused or closed ones); who is live and why not."""
        started = time.monotonic()
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            for attempt in range(attempts):
                if attempt:
                    await asyncio.sleep(0.5 * attempt)
                async with gate:
                    try:
                        client = await common.ws_connect(
                            self.port, common.token(self.customers[index]), self.handler(index)
                        )
                    except (OSError, TimeoutError, common.WsError) as exc:
                        self.connect_errors[str(exc)[:80] or type(exc).__name__] += 1
                        continue
                    # Connected once the hello is in: the server subscribed and read the head.
                    deadline = time.monotonic() + 60
                    while (
                        self.hello_seq[index] is None
                        and not client.closed.done()
                        and time.monotonic() < deadline
                    ):
                        await asyncio.wait([client.closed], timeout=0.05)
                if self.hello_seq[index] is not None and not client.closed.done():
                    self.clients[index] = client
                    return
                self.connect_errors[f"closed before hello: {client.close_code}"] += 1
                client.close()
                self.hello_seq[index] = None

        await asyncio.gather(*(one(i) for i in range(len(self.customers))))
        live = [c for c, client in zip(self.customers, self.clients, strict=True) if client]
        return {
            "live": live,
            "nonzero_head": sum(1 for h in self.hello_seq if h),
            "errors": dict(self.connect_errors),
            "seconds": time.monotonic() - started,
        }

    def take(self, step: int) -> tuple[bytes, int]:
        samples = self.latency.pop(step, array("d"))
        return samples.tobytes(), self.counts.get(step, 0)

    def final(self) -> dict[str, Any]:
        closes: Counter[str] = Counter()
        for client in self.clients:
            if client is not None and client.closed.done():
                closes[str(client.close_code)] += 1
        return {
            "last": dict(zip(self.customers, self.last, strict=True)),
            "gaps": self.gaps,
            "duplicates": self.duplicates,
            "closed": dict(closes),
        }

    def close(self) -> None:
        for client in self.clients:
            if client is not None:
                client.close()


async def _receiver(
    conn: Connection, port: int, customers: list[str], concurrency: int, attempts: int
) -> None:
    receivers = _Receivers(port, customers)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    # add_reader made the pipe non-blocking; a big reply (latency samples) must not fail.
    os.set_blocking(conn.fileno(), True)
    try:
        while True:
            command = await inbox.get()
            match command:
                case ("connect",):
                    conn.send(("connected", await receivers.connect(concurrency, attempts)))
                case ("counts",):
                    conn.send(("counts", dict(receivers.counts)))
                case ("take", int() as step):
                    conn.send(("take", *receivers.take(step)))
                case ("final",):
                    conn.send(("final", receivers.final()))
                case ("close",):
                    receivers.close()
                    await asyncio.sleep(0.5)
                    conn.send(("closed",))
                    return
    finally:
        loop.remove_reader(conn.fileno())
        receivers.close()


def _receiver_main(
    conn: Connection, port: int, customers: list[str], concurrency: int, attempts: int
) -> None:
    common.raise_nofile()
    common.run(_receiver(conn, port, customers, concurrency, attempts))


# -- publisher process -------------------------------------------------------------------------


def _publish_step(
    clients: list[redis.Redis],
    route: list[int],
    channels: list[str],
    seqs: list[int],
    rng: random.Random,
    *,
    step: int,
    rate: float,
    seconds: float,
    max_batch: int,
) -> dict[str, Any]:
    """Publish ``rate`` msg/s for ``seconds`` (open loop); what was achieved."""
    total = int(rate * seconds)
    n = len(channels)
    sent = unrouted = batches = biggest = 0
    per_client = [0] * len(clients)
    lag_max = 0.0
    t0 = time.monotonic()
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - t0) * rate) + 1)
        if due <= sent:
            time.sleep(max(0.0, min(0.002, (sent + 1) / rate - (now - t0))))
            continue
        # How far behind schedule the oldest message of this batch is.
        lag_max = max(lag_max, (now - t0) - sent / rate)
        batch = min(due - sent, max_batch)
        # One pipeline per Redis (on a cluster: per master, SPUBLISH to the slot's owner).
        pipes = [client.pipeline(transaction=False) for client in clients]
        sent_at = time.time()
        for _ in range(batch):
            i = rng.randrange(n)
            seq = seqs[i] = seqs[i] + 1
            data = f'{seq} {{"type":"event","seq":{seq},"t":{sent_at:.6f},"s":{step}}}'
            if len(clients) == 1:
                pipes[0].publish(channels[i], data)
                per_client[0] += 1
            else:
                per_client[route[i]] += 1
                pipes[route[i]].execute_command("SPUBLISH", channels[i], data)  # type: ignore[no-untyped-call]
        for pipe in pipes:
            if len(pipe):
                unrouted += sum(1 for receivers in pipe.execute() if receivers == 0)
        sent += batch
        batches += 1
        biggest = max(biggest, batch)
    elapsed = time.monotonic() - t0
    return {
        "sent": sent,
        "seconds": elapsed,
        "rate": sent / elapsed if elapsed > 0 else 0.0,
        "unrouted": unrouted,
        "batches": batches,
        "max_batch": biggest,
        "max_lag_ms": lag_max * 1000,
        "per_redis": dict(
            zip(
                [c.connection_pool.connection_kwargs["port"] for c in clients],
                per_client,
                strict=True,
            )
        ),
    }


def _cluster_clients(seed_port: int) -> tuple[list[redis.Redis], list[int]]:
    """A client per master of the cluster at ``seed_port``, and slot → client index."""
    seed = redis.Redis(port=seed_port, socket_timeout=10)
    owner = [0] * 16384
    clients: list[redis.Redis] = []
    for entry in seed.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
        clients.append(redis.Redis(host=entry[2][0].decode(), port=entry[2][1], socket_timeout=10))
        for slot in range(int(entry[0]), int(entry[1]) + 1):
            owner[slot] = len(clients) - 1
    seed.close()
    return clients, owner


def _publisher_main(conn: Connection, prefix: str, seed: int, cluster_port: int) -> None:
    if cluster_port:
        clients, slot_owner = _cluster_clients(cluster_port)
    else:
        clients, slot_owner = [redis.Redis.from_url(common.REDIS_URL, socket_timeout=10)], []
    customers: list[str] = []
    channels: list[str] = []
    route: list[int] = []
    seqs: list[int] = []
    rng = random.Random(seed)
    for client in clients:
        client.ping()  # connect now, not inside the first timed batch
    try:
        while True:
            try:
                command = conn.recv()
            except EOFError:
                return
            match command:
                case ("targets", list() as targets):
                    customers = targets
                    channels = [f"{prefix}customer:{c}" for c in customers]
                    if slot_owner:
                        route = [slot_owner[key_slot(c.encode())] for c in channels]
                    seqs = [0] * len(customers)
                    conn.send(("targets", len(customers)))
                case ("step", int() as step, float() as rate, float() as seconds, int() as batch):
                    result = _publish_step(
                        clients,
                        route,
                        channels,
                        seqs,
                        rng,
                        step=step,
                        rate=rate,
                        seconds=seconds,
                        max_batch=batch,
                    )
                    conn.send(("stepped", result))
                case ("final",):
                    conn.send(("final", dict(zip(customers, seqs, strict=True))))
                case _:
                    return
    finally:
        for client in clients:
            client.close()


# -- orchestration -----------------------------------------------------------------------------


class _Worker:
    """A child process and the pipe to it; every reply has a timeout."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    async def ask(self, command: tuple[Any, ...], timeout: float) -> tuple[Any, ...]:
        self.conn.send(command)
        return await self.reply(timeout)

    async def reply(self, timeout: float) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while not self.conn.poll():
            if not self.process.is_alive():
                raise RuntimeError(f"{self.process.name} died (exit {self.process.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.process.name}: no reply within {timeout}s")
            await asyncio.sleep(0.01)
        reply: tuple[Any, ...] = self.conn.recv()
        return reply

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        self.process.join(3)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(3)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(3)


def _spawn(ctx: Any, name: str, target: Callable[..., None], *args: object) -> _Worker:
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
    process.start()
    child.close()
    return _Worker(process, parent)


async def _collect(
    receivers: list[_Worker], step: int, sent: int, drain: float
) -> tuple[list[float], int, float]:
    """Wait until ``sent`` messages of ``step`` arrived (or ``drain`` s passed); latencies."""
    started = time.monotonic()
    while True:
        replies = await asyncio.gather(*(r.ask(("counts",), 30) for r in receivers))
        got = sum(reply[1].get(step, 0) for reply in replies)
        if got >= sent or time.monotonic() - started > drain:
            break
        await asyncio.sleep(0.1)
    waited = time.monotonic() - started
    samples: list[float] = []
    received = 0
    for reply in await asyncio.gather(*(r.ask(("take", step), 60) for r in receivers)):
        values = array("d")
        values.frombytes(reply[1])
        samples.extend(values)
        received += reply[2]
    return samples, received, waited


async def _bench(args: argparse.Namespace, server: common.ServerProcess) -> dict[str, Any]:
    database_url = await common.recreate_database(args.database)
    server.env = common.server_env(database_url, **dict(args.server_env))
    server.start()
    await server.wait_ready()
    prefix = server.env["REDIS_CHANNEL_PREFIX"]
    print(f"server pid {server.pid} on cpu {args.server_cpu}, port {server.port}, prefix {prefix}")

    ctx = multiprocessing.get_context("spawn")
    customers = [f"fan-{i:06d}" for i in range(args.customers)]
    workers: list[_Worker] = []
    try:
        rss_before = common.rss_kib(server.pid)
        per_proc = max(1, args.connect_concurrency // args.receivers)
        receivers = [
            _spawn(
                ctx,
                f"receiver-{i}",
                _receiver_main,
                server.port,
                list(part),
                per_proc,
                args.connect_attempts,
            )
            for i, part in enumerate(common.chunks(customers, args.receivers))
        ]
        workers.extend(receivers)
        cluster = args.cluster_nodes
        publisher = _spawn(
            ctx, "publisher", _publisher_main, prefix, args.seed, cluster[0][1] if cluster else 0
        )
        workers.append(publisher)

        redis_pid = common.redis_pid()
        groups: dict[str, Callable[[], list[int]]] = {
            "server": lambda: [server.pid],
            "receivers": lambda: [w.process.pid or 0 for w in receivers],
            "publisher": lambda: [publisher.process.pid or 0],
            "redis": lambda: [redis_pid] if redis_pid else [],
            "postgres": lambda: common.pids_named("postgres"),
        }
        if cluster:
            # Every node of the cluster, and each on its own ("redis <role> <port>").
            groups["redis"] = lambda: [pid for _, _, pid in cluster]
            for role, port, pid in cluster:
                groups[f"redis {role} {port}"] = functools.partial(list, [pid])
        meter = common.CpuMeter(groups)
        meter.start()
        connect_started = time.monotonic()
        connected = [
            reply[1]
            for reply in await asyncio.gather(*(r.ask(("connect",), 900) for r in receivers))
        ]
        connect_seconds = time.monotonic() - connect_started
        connect_cpu = meter.stop()
        live = [c for part in connected for c in part["live"]]
        n_connected = len(live)
        errors: Counter[str] = Counter()
        for c in connected:
            errors.update(c["errors"])
        await publisher.ask(("targets", live), 60)
        after_connect = await common.scrape(server.base)
        await asyncio.sleep(args.settle)
        rss_after = common.rss_kib(server.pid)
        metrics = await common.scrape(server.base)
        held = common.metric(metrics, "ws_connections")
        per_conn = (rss_after - rss_before) * 1024 / max(1, n_connected)
        print(
            f"connected {n_connected:,}/{args.customers:,} in {connect_seconds:.1f}s"
            f" ({n_connected / max(connect_seconds, 1e-9):,.0f}/s); server ws_connections={held};"
            f" RSS {rss_before / 1024:.1f} → {rss_after / 1024:.1f} MiB ="
            f" {per_conn / 1024:.1f} KiB per connection"
            + (f"; connect errors {dict(errors)}" if errors else "")
            + f"; cpu while connecting {connect_cpu}",
            flush=True,
        )

        steps: list[dict[str, Any]] = []
        failures_in_a_row = 0
        plan = [(rate, args.step_seconds, False) for rate in args.rates]
        if args.warmup > 0:
            plan.insert(0, (args.rates[0], args.warmup, True))
        for step, (rate, seconds, warmup) in enumerate(plan):
            before = await common.scrape(server.base)
            raw = common.RESULTS / f"fanout-py-spy-{rate}.raw"
            recording = None
            if args.profile and rate in args.profile_rates:
                recording = profile.record(server.pid, min(args.profile, seconds), raw)
            preempted = common.preemptions(server.pid)
            meter.start()
            reply = await publisher.ask(
                ("step", step, float(rate), float(seconds), args.max_batch),
                seconds * 3 + 60,
            )
            cpu = meter.stop()
            preempted = common.preemptions(server.pid) - preempted
            profile_summary = profile.finish(recording, raw)
            published: dict[str, Any] = reply[1]
            samples, received, drained = await _collect(
                receivers, step, published["sent"], args.drain
            )
            after = await common.scrape(server.base)
            latency = common.summarize_ms(samples)
            lost = published["sent"] - received
            sent_by_server = (common.metric(after, "ws_messages_sent_total") or 0.0) - (
                common.metric(before, "ws_messages_sent_total") or 0.0
            )
            slow = (common.metric(after, "ws_slow_consumer_closes_total") or 0.0) - (
                common.metric(before, "ws_slow_consumer_closes_total") or 0.0
            )
            generator_ok = published["rate"] >= 0.95 * rate
            ok = lost == 0 and slow == 0 and latency["p99_ms"] <= args.p99_target_ms
            row = {
                "step": step,
                "warmup": warmup,
                "seconds": seconds,
                "target_rate": rate,
                "published": published,
                "received": received,
                "lost": lost,
                "drain_seconds": drained,
                "latency": latency,
                "server_sent": sent_by_server,
                "slow_consumer_closes": slow,
                "cpu_percent": cpu,
                "server_preemptions": preempted,
                "gc": common.gc_window(before, after),
                "generator_kept_up": generator_ok,
                "profile": profile_summary,
                "ok": ok,
            }
            steps.append(row)
            print(
                f"{'warm-up' if warmup else f'step {step}'}: {rate:,}/s target,"
                f" {published['rate']:,.0f}/s published,"
                f" {received:,}/{published['sent']:,} received, p50 {latency['p50_ms']:.1f} ms,"
                f" p99 {latency['p99_ms']:.1f} ms, max {latency['max_ms']:.1f} ms;"
                f" cpu {cpu}; {'ok' if ok else 'FAIL'}",
                flush=True,
            )
            if warmup:
                continue
            failures_in_a_row = 0 if ok else failures_in_a_row + 1
            if failures_in_a_row and (lost or failures_in_a_row >= args.stop_after_failures):
                break
            await asyncio.sleep(args.pause)

        finals = [
            reply[1] for reply in await asyncio.gather(*(r.ask(("final",), 60) for r in receivers))
        ]
        expected = (await publisher.ask(("final",), 60))[1]
        last: dict[str, int] = {}
        closed: Counter[str] = Counter()
        for f in finals:
            last.update(f["last"])
            closed.update(f["closed"])
        short = sum(1 for c, seq in expected.items() if last.get(c, 0) < seq)
        metrics = await common.scrape(server.base)
        for r in receivers:
            with contextlib.suppress(Exception):
                await r.ask(("close",), 30)
        return {
            "customers": args.customers,
            "connected": n_connected,
            "connect_seconds": connect_seconds,
            "connect_errors": dict(errors),
            "connect_cpu_percent": connect_cpu,
            "server_ws_connections": held,
            "gc_after_connect": common.gc_summary(after_connect),
            "gc_pause_max_after_connect_ms": (
                common.metric(after_connect, "python_gc_pause_max_seconds") or 0.0
            )
            * 1000,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_per_connection_bytes": per_conn,
            "steps": steps,
            "streams_short_at_end": short,
            "gaps": sum(f["gaps"] for f in finals),
            "duplicates": sum(f["duplicates"] for f in finals),
            "closed_by_server": dict(closed),
            "gc_pause_max_ms": (common.metric(metrics, "python_gc_pause_max_seconds") or 0.0)
            * 1000,
            "gc": common.gc_summary(metrics),
        }
    finally:
        for worker in workers:
            worker.stop()


def _report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    print()
    print(
        f"fan-out: {result['connected']:,} of {result['customers']:,} customers connected"
        f" ({result['connect_seconds']:.1f} s); server RSS {result['rss_before_kib'] / 1024:.1f}"
        f" → {result['rss_after_kib'] / 1024:.1f} MiB;"
        f" {result['rss_per_connection_bytes'] / 1024:.1f} KiB per idle connection"
    )
    rows = []
    for s in result["steps"]:
        lat, cpu = s["latency"], s["cpu_percent"]
        rows.append(
            [
                f"{s['target_rate']:,}" + (" (warm-up)" if s["warmup"] else ""),
                s["published"]["rate"],
                s["received"],
                s["lost"],
                lat["p50_ms"],
                lat["p99_ms"],
                lat["max_ms"],
                cpu["server"],
                cpu["receivers"],
                cpu["publisher"],
                cpu["redis"],
                s["server_preemptions"],
                int(s["gc"].get("gen2", 0)),
                s["gc"]["worst_le_ms"],
                "ok" if s["ok"] else "FAIL",
            ]
        )
    print(
        common.table(
            [
                "target/s",
                "published/s",
                "received",
                "lost",
                "p50 ms",
                "p99 ms",
                "max ms",
                "server cpu%",
                "recv cpu%",
                "pub cpu%",
                "redis cpu%",
                "preempted",
                "gen2 GCs",
                "GC worst ≤ ms",
                f"p99≤{args.p99_target_ms:g}",
            ],
            rows,
        )
    )
    for s in result["steps"]:
        per_redis = s["published"].get("per_redis", {})
        if len(per_redis) < 2:
            continue
        # CPU per message per shard: the master's CPU over the messages routed to it (and its
        # replica's, which gets every SPUBLISH of the shard replicated).
        parts = []
        for port, count in per_redis.items():
            rate = count / s["published"]["seconds"]
            cpu = s["cpu_percent"].get(f"redis master {port}", 0.0)
            parts.append(f"{port}: {rate:,.0f} msg/s, {cpu:.1f} % = {cpu * 1e4 / rate:.1f} µs/msg")
        replicas = {k: v for k, v in s["cpu_percent"].items() if k.startswith("redis replica")}
        print(f"{s['target_rate']:,}/s per master: {'; '.join(parts)}; replicas cpu% {replicas}")
    for s in result["steps"]:
        if s["profile"]:
            print(f"\nstep {s['target_rate']}/s:\n{s['profile']}")
    passing = [s for s in result["steps"] if s["ok"] and not s["warmup"]]
    best = max((s["target_rate"] for s in passing), default=None)
    at_1k = next((s for s in result["steps"] if s["target_rate"] == 1000 and not s["warmup"]), None)
    print()
    print(f"highest rate with p99 ≤ {args.p99_target_ms:g} ms and no loss: {best}")
    if at_1k is not None:
        print(f"p99 at 1,000 msg/s: {at_1k['latency']['p99_ms']:.2f} ms")
    print(
        f"end state: {result['streams_short_at_end']} streams short of their last seq,"
        f" {result['gaps']} seq gaps, {result['duplicates']} duplicates,"
        f" closes by server {result['closed_by_server'] or 'none'};"
        f" worst server GC pause {result['gc_pause_max_ms']:.1f} ms"
    )


def main() -> None:
    """Parse arguments, run the fan-out benchmark, print the table (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000, help="connected customers")
    parser.add_argument(
        "--rates",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1000, 2000, 4000, 8000, 12000, 16000, 20000],
        help="comma-separated msg/s steps",
    )
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds at the first rate before the measured steps (reported apart; 0: none)",
    )
    parser.add_argument("--p99-target-ms", type=float, default=250.0)
    parser.add_argument("--receivers", type=int, default=1, help="receiver processes")
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--connect-attempts", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=2000, help="PUBLISHes per pipeline")
    parser.add_argument("--drain", type=float, default=10.0, help="max wait for stragglers, s")
    parser.add_argument("--pause", type=float, default=2.0, help="idle time between steps, s")
    parser.add_argument("--settle", type=float, default=3.0, help="idle time before RSS, s")
    parser.add_argument(
        "--stop-after-failures",
        type=int,
        default=2,
        help="stop after this many failed steps in a row (always stop on loss)",
    )
    parser.add_argument("--server-cpu", default="0", help="taskset list for the server")
    parser.add_argument("--loadgen-cpu", default="1", help="cpus for receivers and publisher")
    parser.add_argument("--database", default="orderstatus_bench")
    parser.add_argument(
        "--server-module",
        default="server",
        help="python -m MODULE to run instead of the server (a wrapper around it)",
    )
    parser.add_argument(
        "--server-env", type=common.env_pair, action="append", default=[], help="NAME=VALUE"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard time limit")
    parser.add_argument(
        "--profile", type=float, default=0, help="py-spy the server for this many seconds"
    )
    parser.add_argument(
        "--profile-rates",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[],
        help="the steps (rates) to profile",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run on a local Redis Cluster (3 masters + 3 replicas, sharded pub/sub)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    args.cluster_nodes = []
    if not args.cluster:
        common.run_bench(args, _bench, _report)
        return
    # The test harness's cluster: the same topology the tests run on.
    from tests.channels.cluster_helpers import LocalCluster

    local = LocalCluster()
    local.start()
    try:
        masters = set(local.masters())
        args.cluster_nodes = [
            ("master" if node.address in masters else "replica", node.port, node.process.pid)
            for node in local.nodes
            if node.process is not None
        ]
        args.server_env.append(("REDIS_CLUSTER_URL", local.url))
        common.run_bench(args, _bench, _report)
    finally:
        local.stop()


if __name__ == "__main__":
    main()
