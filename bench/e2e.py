"""End to end: POS status changes over REST → PostgreSQL → Redis → hub → customers' WebSockets.

    python -m bench.e2e --customers 1000 --rate 500 --duration 20

The server runs on PostgreSQL + Redis, pinned to one core; this load generator runs on the other.
It holds C customers connected (plus one POS watcher per store on the store stream), creates
cash orders for them over REST (R*D/4 by default: each order can take four POS steps,
CONFIRMED → PREPARING → READY → OUT_FOR_DELIVERY → DELIVERED), then POS terminals post status
changes at R per second for D seconds on an open-loop schedule (request j is due at t0 + j/R,
whatever happened to the earlier ones) over N keep-alive HTTP/1.1 connections
(:class:`common.HttpPool`: bare asyncio Protocols, one request in flight per connection unless
``--http-pipeline``; a due request waits in the pool's queue for a free connection).
Latency is from a POST's scheduled send time to the WebSocket receipt of that order's event
with that status on its customer's socket ("sent" is when the request was written to its
socket). Every successful POST (creations included) must arrive exactly once, in seq order per
connection. The load generator's own CPU per status change is measured and reported, so a run
shows whether it, rather than the server, was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench import common, profile

STEPS = ("PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED")


@dataclass
class _Stream:
    """What one WebSocket connection received."""

    name: str
    client: common.WsClient | None = None
    head: int | None = None
    last: int = 0
    events: int = 0
    gaps: int = 0
    duplicates: int = 0


@dataclass
class _State:
    """Everything the load generator knows: sockets, sent POSTs, received events."""

    streams: list[_Stream] = field(default_factory=list)
    # (order id, status) → receipt times on the customer's socket / on the store watcher.
    received: defaultdict[tuple[str, str], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    store_received: defaultdict[tuple[str, str], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # (order id, status) → (scheduled send time, actual send time, response time).
    sent: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)
    order_owner: dict[str, int] = field(default_factory=dict)
    misrouted: int = 0
    http_errors: Counter[str] = field(default_factory=Counter)

    def handler(self, stream: _Stream, *, store: bool) -> Callable[[bytes], None]:
        received = self.store_received if store else self.received
        now = time.time

        def on_text(payload: bytes) -> None:
            at = now()
            message = orjson.loads(payload)
            kind = message["type"]
            if kind == "event":
                seq = message["seq"]
                if seq <= stream.last:
                    stream.duplicates += 1
                    return
                if seq != stream.last + 1:
                    stream.gaps += 1
                stream.last = seq
                stream.events += 1
                if message["stream"] != stream.name:
                    self.misrouted += 1
                received[(message["order_id"], message["status"])].append(at)
            elif kind in ("hello", "reset"):
                stream.head = stream.last = message["head_seq"]

        return on_text


async def _connect_all(
    state: _State, port: int, specs: list[tuple[str, str, bool]], concurrency: int
) -> Counter[str]:
    """Open one socket per (stream name, token, is-store) and wait for every hello."""
    errors: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str, tok: str, store: bool) -> None:
        stream = _Stream(name)
        state.streams.append(stream)
        async with gate:
            try:
                stream.client = await common.ws_connect(
                    port, tok, state.handler(stream, store=store)
                )
            except (OSError, TimeoutError, common.WsError) as exc:
                errors[str(exc)[:80] or type(exc).__name__] += 1

    await asyncio.gather(*(one(*spec) for spec in specs))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        s.client is not None and s.head is None for s in state.streams
    ):
        await asyncio.sleep(0.05)
    return errors


def _order_body(store: str) -> bytes:
    return orjson.dumps(
        {
            "store_id": store,
            "items": [{"sku": "tea", "name": "Masala tea", "quantity": 2, "unit_price": 1500}],
            "currency": "INR",
            "payment_method": "cash",
        }
    )


async def _create_orders(
    state: _State,
    http: common.HttpPool,
    customers: list[str],
    stores: list[str],
    count: int,
    timeout: float,
) -> tuple[list[tuple[str, str]], float]:
    """Create ``count`` cash orders, round-robin over customers and stores; (order, store).

    All requests go into the pool's queue at once; its connections bound the concurrency.
    """
    tokens = [common.token(c) for c in customers]
    bodies = {store: _order_body(store) for store in stores}
    orders: list[tuple[str, str] | None] = [None] * count
    answered = 0
    all_answered = asyncio.Event()

    def send(j: int) -> None:
        customer, store = j % len(customers), stores[j % len(stores)]
        started = time.time()

        def done(status: int, body: bytes, sent: float) -> None:
            nonlocal answered
            answered += 1
            if answered == count:
                all_answered.set()
            if status != 201:
                state.http_errors[f"create {status or body.decode(errors='replace')[:60]}"] += 1
                return
            order_id = orjson.loads(body)["order"]["id"]
            state.order_owner[order_id] = customer
            state.sent[(order_id, "CONFIRMED")] = (started, sent, time.time())
            orders[j] = (order_id, store)

        http.request(
            common.http_request(
                "POST",
                "/api/orders",
                http.hostport,
                body=bodies[store],
                headers=[("Authorization", f"Bearer {tokens[customer]}")],
            ),
            done,
        )

    started = time.monotonic()
    for j in range(count):
        send(j)
    try:
        await asyncio.wait_for(all_answered.wait(), timeout)
    except TimeoutError:
        state.http_errors["create unanswered"] += count - answered
    return [o for o in orders if o is not None], time.monotonic() - started


async def _post_statuses(
    state: _State,
    http: common.HttpPool,
    orders: list[tuple[str, str]],
    rate: float,
    total: int,
    timeout: float,
) -> dict[str, Any]:
    """POST ``total`` status changes at ``rate``/s on an open-loop schedule.

    Request j is due at t0 + j/rate. It is handed to the pool when due, unless the same order's
    previous step is still unanswered: then it goes out when that answer comes (a POS terminal
    does not skip a step), and its lateness shows it. No task or future per request.
    """
    n = len(orders)
    pos_auth = {
        store: [
            ("Authorization", f"Bearer {common.token(f'pos-{store}', role='pos', store_id=store)}")
        ]
        for store in {store for _, store in orders}
    }
    bodies = [orjson.dumps({"status": status}) for status in STEPS]
    busy: set[str] = set()  # orders with a status change in flight
    parked: defaultdict[str, deque[int]] = defaultdict(deque)  # due, waiting for the previous
    waited_for_previous = max_queued = 0
    late_writes = array("d")  # socket write time − due time, s
    answered = 0
    all_answered = asyncio.Event()
    loop = asyncio.get_running_loop()
    t0_wall, t0 = time.time(), loop.time()

    def issue(j: int) -> None:
        order_id, store = orders[j % n]
        step = j // n
        due = t0_wall + j / rate
        busy.add(order_id)

        def done(status: int, body: bytes, sent: float) -> None:
            nonlocal answered
            answered += 1
            late_writes.append(sent - due)
            if status == 200:
                state.sent[(order_id, STEPS[step])] = (due, sent, time.time())
            else:
                state.http_errors[f"status {status or body.decode(errors='replace')[:60]}"] += 1
            waiting = parked.get(order_id)
            if waiting:
                issue(waiting.popleft())
            else:
                busy.discard(order_id)
            if answered == total:
                all_answered.set()

        http.request(
            common.http_request(
                "POST",
                f"/api/pos/orders/{order_id}/status",
                http.hostport,
                body=bodies[step],
                headers=pos_auth[store],
            ),
            done,
        )

    j = 0
    while j < total:
        due_now = min(total, int((loop.time() - t0) * rate) + 1)
        while j < due_now:
            order_id = orders[j % n][0]
            if order_id in busy:
                waited_for_previous += 1
                parked[order_id].append(j)
            else:
                issue(j)
            j += 1
        max_queued = max(max_queued, len(http.queue))
        await asyncio.sleep(max(0.0, j / rate - (loop.time() - t0)))
    scheduled_for = loop.time() - t0
    try:
        await asyncio.wait_for(all_answered.wait(), timeout)
    except TimeoutError:
        state.http_errors["status unanswered"] += total - answered
    return {
        "posted": total,
        "answered": answered,
        "schedule_seconds": scheduled_for,
        "all_answered_seconds": loop.time() - t0,
        "t0": t0_wall,
        "waited_for_previous_step": waited_for_previous,
        "write_lateness": common.summarize_ms(late_writes),
        "max_queued": max_queued,
    }


async def _drain(state: _State, keys: list[tuple[str, str]], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(k in state.received for k in keys):
            break
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _bench(args: argparse.Namespace, server: common.ServerProcess) -> dict[str, Any]:
    database_url = await common.recreate_database(args.database)
    server.env = common.server_env(database_url, **dict(args.server_env))
    server.start()
    await server.wait_ready()
    print(f"server pid {server.pid} on cpu {args.server_cpu}, port {server.port}", flush=True)

    customers = [f"cust-{i:06d}" for i in range(args.customers)]
    stores = [f"store-{i + 1}" for i in range(args.stores)]
    state = _State()
    rss_before = common.rss_kib(server.pid)
    specs = [(f"customer:{c}", common.token(c), False) for c in customers]
    specs += [
        (f"store:{s}", common.token(f"pos-{s}", role="pos", store_id=s), True) for s in stores
    ]
    started = time.monotonic()
    connect_errors = await _connect_all(state, server.port, specs, args.connect_concurrency)
    connect_seconds = time.monotonic() - started
    connected = sum(1 for s in state.streams if s.client is not None)
    await asyncio.sleep(args.settle)
    rss_after = common.rss_kib(server.pid)
    per_conn = (rss_after - rss_before) * 1024 / max(1, connected)
    print(
        f"connected {connected:,}/{len(specs):,} in {connect_seconds:.1f}s;"
        f" RSS {rss_before / 1024:.1f} → {rss_after / 1024:.1f} MiB ="
        f" {per_conn / 1024:.1f} KiB per connection"
        + (f"; errors {dict(connect_errors)}" if connect_errors else ""),
        flush=True,
    )

    total = min(int(args.rate * args.duration), 4 * args.orders)
    http = common.HttpPool(
        "127.0.0.1", server.port, connections=args.http_connections, depth=args.http_pipeline
    )
    try:
        await http.open()
        orders, create_seconds = await _create_orders(
            state, http, customers, stores, args.orders, args.answer_timeout
        )
        created_keys = [(o, "CONFIRMED") for o, _ in orders]
        create_drain = await _drain(state, created_keys, args.drain)
        print(
            f"created {len(orders):,} orders in {create_seconds:.1f}s"
            f" ({len(orders) / max(create_seconds, 1e-9):,.0f}/s), all events in after"
            f" {create_drain:.1f}s more",
            flush=True,
        )

        redis_pid = common.redis_pid()
        meter = common.CpuMeter(
            {
                "server": lambda: [server.pid],
                "loadgen": lambda: [os.getpid()],
                "postgres": lambda: common.pids_named("postgres"),
                "redis": lambda: [redis_pid] if redis_pid else [],
            }
        )
        before = await common.scrape(server.base)
        events_before = sum(s.events for s in state.streams)
        recording = None
        if args.profile:
            recording = profile.record(server.pid, args.profile, common.RESULTS / "e2e-py-spy.raw")
        preempted = common.preemptions(server.pid)
        server_cpu = common.cpu_seconds(server.pid)
        meter.start()
        loadgen_cpu = time.process_time()
        phase = await _post_statuses(state, http, orders, args.rate, total, args.answer_timeout)
        loadgen_cpu = time.process_time() - loadgen_cpu
        cpu = meter.stop()
        server_cpu = common.cpu_seconds(server.pid) - server_cpu
        preempted = common.preemptions(server.pid) - preempted
        profile_summary = profile.finish(recording, common.RESULTS / "e2e-py-spy.raw")
        status_keys = [k for k in state.sent if k[1] != "CONFIRMED"]
        drained = await _drain(state, list(state.sent), args.drain)
        after = await common.scrape(server.base)
        reconnects, protocol_errors = http.reconnects, http.protocol_errors
    finally:
        http.close()
    answered = max(1, phase["answered"])
    phase["loadgen_cpu_ms_per_request"] = loadgen_cpu * 1000 / answered
    phase["server_cpu_ms_per_request"] = server_cpu * 1000 / answered
    phase["http_reconnects"] = reconnects
    phase["http_protocol_errors"] = protocol_errors

    # -- checks ----------------------------------------------------------------------------
    missing = [k for k in state.sent if k not in state.received]
    doubled = [k for k, times in state.received.items() if len(times) > 1]
    unexpected = [k for k in state.received if k not in state.sent]
    store_missing = [k for k in state.sent if k not in state.store_received]
    latencies = [
        state.received[k][0] - state.sent[k][0] for k in status_keys if k in state.received
    ]
    from_send = [
        state.received[k][0] - state.sent[k][1] for k in status_keys if k in state.received
    ]
    http_latency = [state.sent[k][2] - state.sent[k][1] for k in status_keys]
    create_latency = [
        state.received[k][0] - state.sent[k][0] for k in created_keys if k in state.received
    ]
    receipts = sorted(state.received[k][0] for k in status_keys if k in state.received)
    window = (receipts[-1] - phase["t0"]) if receipts else math.nan
    events_in_phase = sum(s.events for s in state.streams) - events_before
    customer_events = sum(s.events for s in state.streams if s.name.startswith("customer:"))
    store_events = sum(s.events for s in state.streams if s.name.startswith("store:"))

    def delta(name: str) -> float:
        return (common.metric(after, name) or 0.0) - (common.metric(before, name) or 0.0)

    closes = Counter(
        str(s.client.close_code)
        for s in state.streams
        if s.client is not None and s.client.closed.done()
    )
    for s in state.streams:
        if s.client is not None:
            s.client.close()
    await asyncio.sleep(0.5)
    return {
        "customers": args.customers,
        "stores": args.stores,
        "connected": connected,
        "connect_seconds": connect_seconds,
        "connect_errors": dict(connect_errors),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_connection_bytes": per_conn,
        "orders": len(orders),
        "create_seconds": create_seconds,
        "create_latency": common.summarize_ms(create_latency),
        "status_posts_ok": len(status_keys),
        "phase": phase,
        "drain_seconds": drained,
        "latency": common.summarize_ms(latencies),
        "latency_from_actual_send": common.summarize_ms(from_send),
        "http_latency": common.summarize_ms(http_latency),
        "delivered_per_second_customers": len(latencies) / window if window else math.nan,
        "ws_events_per_second_all_sockets": events_in_phase / window if window else math.nan,
        "cpu_percent": cpu,
        "server_preemptions": preempted,
        "http_errors": dict(state.http_errors),
        "expected": len(state.sent),
        "missing": len(missing),
        "duplicates": len(doubled) + sum(s.duplicates for s in state.streams),
        "unexpected": len(unexpected),
        "seq_gaps": sum(s.gaps for s in state.streams),
        "misrouted": state.misrouted,
        "store_missing": len(store_missing),
        "customer_events": customer_events,
        "store_events": store_events,
        "closed_by_server": dict(closes),
        "server_messages_sent": delta("ws_messages_sent_total"),
        "server_backfills": delta("ws_backfills_total"),
        "slow_consumer_closes": common.metric(after, "ws_slow_consumer_closes_total"),
        "publish_failures": common.metric(after, "publish_failures_total"),
        "gc_pause_max_ms": (common.metric(after, "python_gc_pause_max_seconds") or math.nan) * 1000,
        "gc_in_phase": common.gc_window(before, after),
        "write_seconds": common.histogram_window(before, after, "write_seconds"),
        "gc": common.gc_summary(after),
        "profile": profile_summary,
    }


def _report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    loss = r["missing"] + r["duplicates"] + r["unexpected"] + r["seq_gaps"] + r["misrouted"]
    print()
    print(
        f"e2e: {r['connected']:,} sockets ({r['customers']:,} customers + {r['stores']} store"
        f" watcher(s)); server RSS {r['rss_before_kib'] / 1024:.1f} →"
        f" {r['rss_after_kib'] / 1024:.1f} MiB; {r['rss_per_connection_bytes'] / 1024:.1f} KiB"
        f" per idle connection"
    )
    print(
        f"{r['orders']:,} orders created in {r['create_seconds']:.1f}s; then"
        f" {r['phase']['posted']:,} status changes scheduled at {args.rate:g}/s over"
        f" {r['phase']['schedule_seconds']:.1f}s ({r['status_posts_ok']:,} answered 200;"
        f" HTTP errors {r['http_errors'] or 'none'})"
    )
    rows = []
    for label, lat in (
        ("POST scheduled → WS receipt", r["latency"]),
        ("POST sent → WS receipt", r["latency_from_actual_send"]),
        ("POST sent → HTTP 200", r["http_latency"]),
        ("order create → WS receipt", r["create_latency"]),
    ):
        rows.append(
            [label, int(lat["count"]), lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["max_ms"]]
        )
    print(common.table(["latency", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows))
    cpu = r["cpu_percent"]
    print(
        common.table(
            [
                "delivered/s (customers)",
                "WS events/s (all)",
                "loss",
                "server cpu%",
                "postgres cpu%",
                "redis cpu%",
                "loadgen cpu%",
                "server preempted",
                "GC in phase worst ≤ ms",
                "worst GC pause ms",
            ],
            [
                [
                    r["delivered_per_second_customers"],
                    r["ws_events_per_second_all_sockets"],
                    loss,
                    cpu["server"],
                    cpu["postgres"],
                    cpu["redis"],
                    cpu["loadgen"],
                    r["server_preemptions"],
                    r["gc_in_phase"]["worst_le_ms"],
                    r["gc_pause_max_ms"],
                ]
            ],
        )
    )
    met = r["latency"]["p99_ms"] <= args.p99_target_ms and loss == 0 and not r["http_errors"]
    print(
        f"loss detail: {r['missing']} missing, {r['duplicates']} duplicated, {r['unexpected']}"
        f" unexpected, {r['seq_gaps']} seq gaps, {r['misrouted']} misrouted;"
        f" store watchers missing {r['store_missing']}; server backfills {r['server_backfills']:g},"
        f" closes {r['closed_by_server'] or 'none'}"
    )
    w = r["write_seconds"]
    print(
        f"server write path (lock → commit), {w['count']:g} writes: mean {w['mean_ms']:.1f} ms,"
        f" {w.get('over_50ms', math.nan):g} over 50 ms, {w.get('over_100ms', math.nan):g} over"
        f" 100 ms, {w.get('over_250ms', math.nan):g} over 250 ms"
    )
    ph = r["phase"]
    late = ph["write_lateness"]
    print(
        f"load generator: {ph['loadgen_cpu_ms_per_request']:.3f} ms of its CPU per status change"
        f" (POST + its 2 WebSocket events), server {ph['server_cpu_ms_per_request']:.3f} ms;"
        f" request written after its due time: p50 {late['p50_ms']:.1f} ms, p99"
        f" {late['p99_ms']:.1f} ms, max {late['max_ms']:.1f} ms; {ph['max_queued']:,} requests"
        f" queued at most for a free connection; {ph['waited_for_previous_step']:,} waited for"
        f" their order's previous step; {ph['http_reconnects']} reconnects"
    )
    if r["profile"]:
        print(r["profile"])
    print(
        f"target {args.rate:g}/s with p99 ≤ {args.p99_target_ms:g} ms and zero loss:"
        f" {'MET' if met else 'NOT MET'}"
    )


def main() -> None:
    """Parse arguments, run the end-to-end benchmark, print the tables (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1000, help="connected customers")
    parser.add_argument("--stores", type=int, default=1, help="stores (one POS watcher each)")
    parser.add_argument("--rate", type=float, default=500.0, help="status changes per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of status changes")
    parser.add_argument(
        "--orders", type=int, default=None, help="orders to create (default rate*duration/4)"
    )
    parser.add_argument(
        "--http-connections", type=int, default=32, help="keep-alive connections of the POS client"
    )
    parser.add_argument(
        "--http-pipeline",
        type=int,
        default=1,
        help="requests in flight per connection (1: one at a time; more: pipelined)",
    )
    parser.add_argument(
        "--answer-timeout", type=float, default=300.0, help="max wait for the last answer, s"
    )
    parser.add_argument("--connect-concurrency", type=int, default=200)
    parser.add_argument("--p99-target-ms", type=float, default=50.0)
    parser.add_argument("--drain", type=float, default=15.0, help="max wait for stragglers, s")
    parser.add_argument("--settle", type=float, default=3.0, help="idle time before RSS, s")
    parser.add_argument("--server-cpu", default="0", help="taskset list for the server")
    parser.add_argument("--loadgen-cpu", default="1", help="cpus for this load generator")
    parser.add_argument("--database", default="orderstatus_bench")
    parser.add_argument(
        "--server-module",
        default="server",
        help="python -m MODULE to run instead of the server (a wrapper around it)",
    )
    parser.add_argument(
        "--server-env", type=common.env_pair, action="append", default=[], help="NAME=VALUE"
    )
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard time limit")
    parser.add_argument(
        "--profile", type=float, default=0, help="py-spy the server for this many seconds"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.orders is None:
        args.orders = math.ceil(args.rate * args.duration / 4)

    common.run_bench(args, _bench, _report)


if __name__ == "__main__":
    main()
