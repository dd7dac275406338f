"""Signed gateway webhooks → one web process → the customer's WebSocket, on a ladder of rates.

    python -m bench.webhooks --rates 50,100,200 --step-seconds 10

One ``python -m server`` on PostgreSQL + Redis, pinned to one core, offers the sandbox gateway of
a ``bench.sandbox`` process (on the load-generator core). C customers and one POS watcher per
store hold WebSockets; the customers' online orders are created and their payments started
through the API (``POST /api/orders``, ``POST /api/orders/{id}/payments``), so each payment is
INITIATED at the sandbox and belongs to a connected customer. Then, step by step, this script
posts ``payment.succeeded`` webhooks to ``POST /webhooks/sandbox`` at R per second on an
open-loop schedule (webhook j is due at t0 + j/R whatever happened to the earlier ones), each a
new event about a different payment, signed ``Sandbox-Signature`` at its send exactly as the
sandbox signs (``gateways.signing.sign``, the sandbox's secret). Latency: from the webhook's
scheduled send to the customer's socket receiving that payment's ``payment.status`` COMPLETED
event. Every webhook must be answered 200 with outcome ``apply`` and its event (and the order's
CONFIRMED) must arrive exactly once; the figure is the highest rate whose p99 ≤ 50 ms with no
loss. The webhooks are ours rather than the sandbox's own sends so that the schedule, not the
sandbox's httpx client, sets the offered rate.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import time
from array import array
from collections import Counter
from typing import Any

import orjson

from bench import common, profile, sandbox
from bench.e2e import _connect_all, _State
from gateways import signing
from gateways.sandbox_server import SIGNATURE_HEADER

AMOUNT = 3000  # minor units: 2 × 1500
PROFILE_RAW = common.RESULTS / "webhooks-py-spy.raw"


def _order_body(store: str) -> bytes:
    return orjson.dumps(
        {
            "store_id": store,
            "items": [{"sku": "tea", "name": "Masala tea", "quantity": 2, "unit_price": 1500}],
            "currency": "INR",
            "payment_method": "online",
        }
    )


def webhook_body(order_id: str, payment_id: str, sandbox_id: str) -> bytes:
    """A sandbox ``payment.succeeded`` event, as ``SandboxServer._emit`` builds it."""
    now = int(time.time())
    return orjson.dumps(
        {
            "id": "evt_" + secrets.token_hex(10),
            "type": "payment.succeeded",
            "created": now,
            "data": {
                "object": {
                    "object": "payment",
                    "id": sandbox_id,
                    "reference": payment_id,
                    "status": "succeeded",
                    "amount": AMOUNT,
                    "currency": "INR",
                    "amount_refunded": 0,
                    "transaction_id": "sbx_txn_" + secrets.token_hex(8),
                    "metadata": {"order_id": order_id, "payment_id": payment_id},
                    "created": now,
                }
            },
        }
    )


async def _setup_payments(
    http: common.HttpPool,
    box: common.ServerProcess,
    state: _State,
    customers: list[str],
    stores: list[str],
    count: int,
) -> list[tuple[str, str, str]]:
    """Create ``count`` online orders and start their sandbox payments through the API;
    (order id, payment id, sandbox id) of each."""
    tokens = [common.token(c) for c in customers]
    creates = []
    for j in range(count):
        customer = j % len(customers)
        creates.append(
            common.http_request(
                "POST",
                "/api/orders",
                http.hostport,
                body=_order_body(stores[j % len(stores)]),
                headers=[("Authorization", f"Bearer {tokens[customer]}")],
            )
        )
    orders: list[tuple[str, int]] = []
    for j, (status, body) in enumerate(await sandbox.request_all(http, creates)):
        if status != 201:
            raise RuntimeError(f"order create answered {status}: {body[:200]!r}")
        order_id = orjson.loads(body)["order"]["id"]
        state.order_owner[order_id] = j % len(customers)
        orders.append((order_id, j % len(customers)))
    starts = [
        common.http_request(
            "POST",
            f"/api/orders/{order_id}/payments",
            http.hostport,
            body=b'{"gateway":"sandbox"}',
            headers=[("Authorization", f"Bearer {tokens[customer]}")],
        )
        for order_id, customer in orders
    ]
    payments: list[tuple[str, str]] = []
    for (order_id, _), (status, body) in zip(
        orders, await sandbox.request_all(http, starts), strict=True
    ):
        if status != 201:
            raise RuntimeError(f"payment start answered {status}: {body[:200]!r}")
        payments.append((order_id, orjson.loads(body)["payment"]["id"]))
    at_sandbox = {
        p["reference"]: p["id"] for p in (await sandbox.get(box, "/control/payments"))["payments"]
    }
    return [(order_id, pid, at_sandbox[pid]) for order_id, pid in payments]


async def _step(
    state: _State,
    http: common.HttpPool,
    payments: list[tuple[str, str, str]],
    rate: float,
    drain: float,
) -> dict[str, Any]:
    """Post one webhook per payment at ``rate``/s, open loop; wait for their events."""
    bodies = [webhook_body(*p) for p in payments]
    total = len(bodies)
    due = array("d", [0.0]) * total
    sent = array("d", [0.0]) * total
    answered_at = array("d", [0.0]) * total
    outcomes: Counter[str] = Counter()
    answered = 0
    all_answered = asyncio.Event()
    loop = asyncio.get_running_loop()
    t0_wall, t0 = time.time(), loop.time()

    def issue(j: int) -> None:
        body = bodies[j]
        due[j] = t0_wall + j / rate
        headers = [(SIGNATURE_HEADER, signing.sign(body, sandbox.WEBHOOK_SECRET, int(time.time())))]

        def done(status: int, response: bytes, at: float) -> None:
            nonlocal answered
            answered += 1
            sent[j], answered_at[j] = at, time.time()
            if status == 200:
                outcomes[str(orjson.loads(response).get("outcome"))] += 1
            else:
                outcomes[f"http {status or response.decode(errors='replace')[:60]}"] += 1
            if answered == total:
                all_answered.set()

        http.request(
            common.http_request(
                "POST", "/webhooks/sandbox", http.hostport, body=body, headers=headers
            ),
            done,
        )

    j = max_queued = 0
    while j < total:
        due_now = min(total, int((loop.time() - t0) * rate) + 1)
        while j < due_now:
            issue(j)
            j += 1
        max_queued = max(max_queued, len(http.queue))
        await asyncio.sleep(max(0.0, j / rate - (loop.time() - t0)))
    schedule_seconds = loop.time() - t0
    try:
        await asyncio.wait_for(all_answered.wait(), drain + 60)
    except TimeoutError:
        outcomes["unanswered"] += total - answered
    keys = [(order_id, "COMPLETED") for order_id, _, _ in payments]
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline and not all(k in state.received for k in keys):
        await asyncio.sleep(0.05)
    latencies = [state.received[k][0] - due[j] for j, k in enumerate(keys) if k in state.received]
    from_send = [state.received[k][0] - sent[j] for j, k in enumerate(keys) if k in state.received]
    http_latency = [answered_at[j] - sent[j] for j in range(total) if sent[j]]
    late = [sent[j] - due[j] for j in range(total) if sent[j]]
    receipts = sorted(state.received[k][0] for k in keys if k in state.received)
    window = (receipts[-1] - t0_wall) if receipts else math.nan
    confirmed = [(order_id, "CONFIRMED") for order_id, _, _ in payments]
    return {
        "rate": rate,
        "posted": total,
        "schedule_seconds": schedule_seconds,
        "outcomes": dict(outcomes),
        "delivered_per_second": len(latencies) / window if window else math.nan,
        "latency": common.summarize_ms(latencies),
        "latency_from_send": common.summarize_ms(from_send),
        "http_latency": common.summarize_ms(http_latency),
        "write_lateness": common.summarize_ms(late),
        "max_queued": max_queued,
        "missing": sum(1 for k in keys if k not in state.received),
        "duplicated": sum(1 for k in keys if len(state.received.get(k, ())) > 1),
        "confirmed_missing": sum(1 for k in confirmed if k not in state.received),
        "confirmed_duplicated": sum(1 for k in confirmed if len(state.received.get(k, ())) > 1),
        "store_missing": sum(1 for k in keys if k not in state.store_received),
    }


async def _bench(args: argparse.Namespace, server: common.ServerProcess) -> dict[str, Any]:
    rates = [float(r) for r in args.rates.split(",")]
    counts = [math.ceil(r * args.step_seconds) for r in rates]
    database_url = await common.recreate_database(args.database)
    box = sandbox.process(args.loadgen_cpu)
    box.start()
    try:
        await sandbox.wait_ready(box)
        server.env = common.server_env(
            database_url,
            SANDBOX="true",
            SANDBOX_API_BASE=box.base,
            SANDBOX_WEBHOOK_SECRET=sandbox.WEBHOOK_SECRET,
            RECONCILER_IN_PROCESS="false",
            **dict(args.server_env),
        )
        server.start()
        await server.wait_ready()
        print(f"server pid {server.pid} on cpu {args.server_cpu}, port {server.port}", flush=True)
        return await _run(args, server, box, rates, counts)
    finally:
        box.stop()


async def _run(
    args: argparse.Namespace,
    server: common.ServerProcess,
    box: common.ServerProcess,
    rates: list[float],
    counts: list[int],
) -> dict[str, Any]:
    customers = [f"cust-{i:06d}" for i in range(args.customers)]
    stores = [f"store-{i + 1}" for i in range(args.stores)]
    state = _State()
    specs = [(f"customer:{c}", common.token(c), False) for c in customers]
    specs += [
        (f"store:{s}", common.token(f"pos-{s}", role="pos", store_id=s), True) for s in stores
    ]
    connect_errors = await _connect_all(state, server.port, specs, 100)
    connected = sum(1 for s in state.streams if s.client is not None)
    http = common.HttpPool("127.0.0.1", server.port, connections=args.http_connections)
    steps: list[dict[str, Any]] = []
    try:
        await http.open()
        started = time.monotonic()
        payments = await _setup_payments(http, box, state, customers, stores, sum(counts))
        print(
            f"{connected:,} sockets; {len(payments):,} orders created and their payments started"
            f" in {time.monotonic() - started:.1f}s"
            + (f"; connect errors {dict(connect_errors)}" if connect_errors else ""),
            flush=True,
        )
        await asyncio.sleep(1.0)  # the set-up's last events reach the sockets
        redis_pid = common.redis_pid()
        offset = 0
        for i, (rate, count) in enumerate(zip(rates, counts, strict=True)):
            recording = None
            if args.profile and i == len(rates) - 1:
                recording = profile.record(server.pid, args.profile, PROFILE_RAW)
            meter = common.CpuMeter(
                {
                    "server": lambda: [server.pid],
                    "loadgen": lambda: [os.getpid()],
                    "redis": lambda: [redis_pid] if redis_pid else [],
                    # Every backend of the machine's PostgreSQL, other people's included.
                    "postgres": lambda: common.pids_named("postgres"),
                }
            )
            server_cpu = common.cpu_seconds(server.pid)
            preempted = common.preemptions(server.pid)
            before = await common.scrape(server.base)
            meter.start()
            step = await _step(state, http, payments[offset : offset + count], rate, args.drain)
            step["cpu_percent"] = meter.stop()
            after = await common.scrape(server.base)
            step["server_cpu_ms_per_webhook"] = (
                (common.cpu_seconds(server.pid) - server_cpu) * 1000 / max(1, count)
            )
            step["server_preemptions"] = common.preemptions(server.pid) - preempted
            step["gc_in_step"] = common.gc_window(before, after)
            step["write_seconds"] = common.histogram_window(before, after, "write_seconds")
            step["profile"] = profile.finish(recording, PROFILE_RAW)
            offset += count
            steps.append(step)
            _print_step(step, args.p99_target_ms)
            await asyncio.sleep(args.pause)
    finally:
        http.close()
    closes = Counter(
        str(s.client.close_code)
        for s in state.streams
        if s.client is not None and s.client.closed.done()
    )
    result = {
        "customers": args.customers,
        "stores": args.stores,
        "connected": connected,
        "steps": steps,
        "seq_gaps": sum(s.gaps for s in state.streams),
        "stream_duplicates": sum(s.duplicates for s in state.streams),
        "misrouted": state.misrouted,
        "closed_by_server": dict(closes),
    }
    for s in state.streams:
        if s.client is not None:
            s.client.close()
    await asyncio.sleep(0.5)
    return result


def _loss(step: dict[str, Any]) -> int:
    return int(
        step["missing"]
        + step["duplicated"]
        + step["confirmed_missing"]
        + step["confirmed_duplicated"]
        + step["store_missing"]
        + sum(v for k, v in step["outcomes"].items() if k != "apply")
    )


def _met(step: dict[str, Any], target_ms: float) -> bool:
    return bool(step["latency"]["p99_ms"] <= target_ms and _loss(step) == 0)


def _print_step(step: dict[str, Any], target_ms: float) -> None:
    lat = step["latency"]
    print(
        f"  {step['rate']:g}/s: {step['posted']:,} webhooks, p50 {lat['p50_ms']:.1f} ms,"
        f" p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms, outcomes {step['outcomes']},"
        f" loss {_loss(step)}, server cpu {step['cpu_percent']['server']:.0f} %, postgres cpu"
        f" {step['cpu_percent']['postgres']:.0f} %, write path mean"
        f" {step['write_seconds']['mean_ms']:.1f} ms"
        f" → {'ok' if _met(step, target_ms) else 'MISS'}",
        flush=True,
    )


def _report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    print()
    print(
        f"webhooks: {r['connected']:,} sockets ({r['customers']:,} customers + {r['stores']}"
        f" store watchers); one web process on cpu {args.server_cpu}"
    )
    rows = []
    for s in r["steps"]:
        lat, send, h = s["latency"], s["latency_from_send"], s["http_latency"]
        rows.append(
            [
                s["rate"],
                s["delivered_per_second"],
                s["posted"],
                _loss(s),
                lat["p50_ms"],
                lat["p99_ms"],
                lat["max_ms"],
                send["p99_ms"],
                h["p99_ms"],
                s["server_cpu_ms_per_webhook"],
                s["cpu_percent"]["server"],
                s["cpu_percent"]["loadgen"],
                s["server_preemptions"],
                s["gc_in_step"]["worst_le_ms"],
                "ok" if _met(s, args.p99_target_ms) else "MISS",
            ]
        )
    print(
        common.table(
            [
                "offered/s",
                "delivered/s",
                "webhooks",
                "loss",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 from send",
                "HTTP p99 ms",
                "server cpu ms/webhook",
                "server cpu%",
                "loadgen cpu%",
                "server preempted",
                "GC worst ≤ ms",
                "ok",
            ],
            rows,
        )
    )
    for s in r["steps"]:
        if s["profile"]:
            print(f"server profile during the {s['rate']:g}/s step:\n{s['profile']}")
    passed = [s["rate"] for s in r["steps"] if _met(s, args.p99_target_ms)]
    print(
        f"streams: {r['seq_gaps']} seq gaps, {r['stream_duplicates']} duplicates,"
        f" {r['misrouted']} misrouted; closes {r['closed_by_server'] or 'none'}"
    )
    print(
        f"highest rate with p99 ≤ {args.p99_target_ms:g} ms (scheduled send → customer socket)"
        f" and zero loss: {f'{max(passed):g}/s' if passed else 'none of the ladder'}"
    )


def main() -> None:
    """Parse arguments, run the webhook benchmark, print the figures (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="50,100,200", help="webhooks/s, one step each")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--customers", type=int, default=500, help="connected customers")
    parser.add_argument("--stores", type=int, default=10, help="stores (one POS watcher each)")
    parser.add_argument("--http-connections", type=int, default=32)
    parser.add_argument("--p99-target-ms", type=float, default=50.0)
    parser.add_argument("--drain", type=float, default=10.0, help="max wait for stragglers, s")
    parser.add_argument("--pause", type=float, default=1.0, help="idle seconds between steps")
    parser.add_argument("--server-cpu", default="0", help="taskset list for the server")
    parser.add_argument("--loadgen-cpu", default="1", help="cpus for this script and the sandbox")
    parser.add_argument("--database", default="orderstatus_bench_webhooks")
    parser.add_argument("--server-module", default="server")
    parser.add_argument(
        "--server-env", type=common.env_pair, action="append", default=[], help="NAME=VALUE"
    )
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard time limit")
    parser.add_argument(
        "--profile", type=float, default=0, help="py-spy the server in the last step, seconds"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    common.run_bench(args, _bench, _report)


if __name__ == "__main__":
    main()
