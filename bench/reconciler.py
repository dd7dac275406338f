"""The reconciler under load: N pending payments due at once, a gateway rate limit of R calls/s.

    python -m bench.reconciler --payments 10000 --rate-limit 100

A sandbox gateway process (``bench.sandbox``, on the load-generator core) holds N payments, each
approved or declined there (``--approve-share``) and never announced by a webhook (they have no
callback URL and the sandbox no webhook URL), so only the reconciler can settle them. The same N
are written straight into a fresh PostgreSQL database as online orders awaiting payment, each
with its payment INITIATED at the sandbox and its next check far in the future. Then K
``python -m reconciler`` processes start (pinned to ``--reconciler-cpu``, sharing
``SANDBOX_RATE_LIMIT=R/second`` in Redis); once they are polling, one UPDATE makes every payment
due at that instant. Measured:

- status calls per second as the sandbox counted them (max and mean over whole seconds): the
  limit must hold;
- time from "all due" until every payment is settled (the database polled every 0.25 s);
- every payment's final status against the sandbox's truth, every order's status after the
  cascade, exactly one ``payment.status`` event per payment, status calls per payment;
- CPU: the reconciler processes' CPU seconds in the drain per status call, and the CPU% of the
  sandbox, PostgreSQL and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from bench import common, profile, sandbox
from orders.db import migrate

SETTLED = {"succeeded": "COMPLETED", "declined": "FAILED"}
ORDER_AFTER = {"COMPLETED": "CONFIRMED", "FAILED": "PENDING_PAYMENT"}
PROFILE_RAW = common.RESULTS / "reconciler-py-spy.raw"


def pg_dsn(database: str) -> str:
    """The asyncpg DSN of ``database`` on the benchmark's PostgreSQL."""
    return f"postgresql://postgres@127.0.0.1:5432/{database}"


async def _sandbox_payments(
    box: common.ServerProcess, ids: list[str], amount: int, approve_share: float, seed: int
) -> dict[str, str]:
    """Create one sandbox payment per id and decide it there; {our id: sandbox id}."""
    http = common.HttpPool("127.0.0.1", box.port, connections=8, depth=16)
    try:
        await http.open()
        creates = [
            common.http_request(
                "POST",
                "/api/payments",
                http.hostport,
                body=orjson.dumps(
                    {
                        "reference": pid,
                        "amount": amount,
                        "currency": "INR",
                        "metadata": {"payment_id": pid},
                    }
                ),
            )
            for pid in ids
        ]
        answers = await sandbox.request_all(http, creates)
        refs: dict[str, str] = {}
        for pid, (status, body) in zip(ids, answers, strict=True):
            if status != 201:
                raise RuntimeError(f"sandbox create answered {status}: {body[:200]!r}")
            refs[pid] = orjson.loads(body)["id"]
        draw = random.Random(seed).random
        verdicts = ["approve" if draw() < approve_share else "decline" for _ in ids]
        actions = [
            common.http_request("POST", f"/control/payments/{refs[pid]}/{verdict}", http.hostport)
            for pid, verdict in zip(ids, verdicts, strict=True)
        ]
        for status, body in await sandbox.request_all(http, actions):
            if status != 200:
                raise RuntimeError(f"sandbox control answered {status}: {body[:200]!r}")
        return refs
    finally:
        http.close()


async def _insert(
    conn: asyncpg.Connection,
    refs: dict[str, str],
    *,
    amount: int,
    customers: int,
    stores: int,
    base: str,
) -> None:
    """Online orders awaiting payment, each with its payment INITIATED at the sandbox and not
    due for a day (the measured phase makes them all due at once)."""
    now = datetime.now(UTC)
    later = now + timedelta(days=1)
    items = orjson.dumps(
        [{"sku": "tea", "name": "Masala tea", "quantity": 2, "unit_price": amount // 2}]
    ).decode()
    orders, payments = [], []
    for j, (pid, ref) in enumerate(refs.items()):
        oid = "ord_" + secrets.token_hex(12)
        customer, store = f"cust-{j % customers:06d}", f"store-{j % stores + 1}"
        orders.append((oid, customer, store, amount, items, now, later))
        payments.append((pid, oid, ref, amount, now, later, f"{base}/pay/{ref}"))
    await conn.executemany(
        "INSERT INTO orders (id, customer_id, store_id, status, payment_status, payment_method,"
        " amount, currency, items, needs_review, created_at, updated_at, expires_at, version)"
        " VALUES ($1, $2, $3, 'PENDING_PAYMENT', 'INITIATED', 'online', $4, 'INR', $5::json,"
        " false, $6, $6, $7, 2)",
        orders,
    )
    await conn.executemany(
        "INSERT INTO payments (id, order_id, gateway, gateway_ref, amount, status, attempts,"
        " next_check_at, created_at, currency, redirect_url, started_at, check_failures,"
        " first_check) VALUES ($1, $2, 'sandbox', $3, $4, 'INITIATED', 0, $6, $5, 'INR', $7,"
        " $5, 0, 20)",
        payments,
    )


async def _backends(conn: asyncpg.Connection, database: str) -> list[int]:
    """Pids of the PostgreSQL backends connected to ``database`` (this script's excluded)."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    return [int(r["pid"]) for r in rows]


async def _wait_polling(conn: asyncpg.Connection, database: str, want: int, timeout: float) -> None:
    """Wait until ``want`` processes hold connections to ``database`` (the reconcilers' pools
    open on their first pass), then one more pass interval."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = await conn.fetchval(
            "SELECT count(DISTINCT client_port) FROM pg_stat_activity WHERE datname = $1"
            " AND pid <> pg_backend_pid()",
            database,
        )
        if n >= want:
            await asyncio.sleep(3.0)
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"reconcilers not polling after {timeout}s")


def _per_second(stats: dict[str, Any]) -> dict[str, Any]:
    """Max and mean status calls per whole second (the first and last seconds are partial)."""
    counts = {int(k): v for k, v in stats["status_calls_per_second"].items()}
    if not counts:
        return {"max": math.nan, "mean": math.nan, "seconds": 0}
    first, last = min(counts), max(counts)
    whole = [counts.get(s, 0) for s in range(first + 1, last)]
    return {
        "max": float(max(counts.values())),
        "max_whole": float(max(whole)) if whole else math.nan,
        "mean": sum(whole) / len(whole) if whole else math.nan,
        "seconds": last - first + 1,
        "series": [counts.get(s, 0) for s in range(first, last + 1)],
    }


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    database_url = await common.recreate_database(args.database)
    await migrate(database_url)
    box = sandbox.process(args.loadgen_cpu)
    reconcilers: list[common.ServerProcess] = []
    conn = await asyncpg.connect(pg_dsn(args.database))
    try:
        box.start()
        await sandbox.wait_ready(box)
        ids = ["pay_" + secrets.token_hex(12) for _ in range(args.payments)]
        started = time.monotonic()
        refs = await _sandbox_payments(box, ids, args.amount, args.approve_share, args.seed)
        print(
            f"sandbox: {len(refs):,} payments created and decided in"
            f" {time.monotonic() - started:.1f}s",
            flush=True,
        )
        await _insert(
            conn,
            refs,
            amount=args.amount,
            customers=args.customers,
            stores=args.stores,
            base=box.base,
        )
        env = common.server_env(
            database_url,
            SANDBOX="true",
            SANDBOX_API_BASE=box.base,
            SANDBOX_WEBHOOK_SECRET=sandbox.WEBHOOK_SECRET,
            SANDBOX_RATE_LIMIT=f"{args.rate_limit:g}/second",
            RECONCILER_BATCH=str(args.batch),
            RECONCILER_CONCURRENCY=str(args.concurrency),
            LOG_LEVEL=args.log_level,
            **dict(args.reconciler_env),
        )
        for i in range(args.reconcilers):
            process = common.ServerProcess(
                env={**env, "INSTANCE_ID": f"bench-reconciler-{i}"},
                cpu=args.reconciler_cpu,
                module="reconciler",
                log_path=common.RESULTS / f"reconciler-{i}.log",
            )
            process.start()
            reconcilers.append(process)
        await _wait_polling(conn, args.database, args.reconcilers, 60)
        for process in reconcilers:
            if process.process is None or process.process.poll() is not None:
                raise RuntimeError(f"reconciler exited:\n{process.log_tail()}")
        idle_cpu = [common.cpu_seconds(p.pid) for p in reconcilers]
        await asyncio.sleep(args.idle)
        idle_cpu_percent = (
            100 * (sum(common.cpu_seconds(p.pid) for p in reconcilers) - sum(idle_cpu)) / args.idle
        )
        before = await sandbox.get(box, "/control/stats")
        arrivals_before = len((await sandbox.get(box, "/bench/arrivals"))["status_calls"])
        redis_pid = common.redis_pid()
        meter = common.CpuMeter(
            {
                "reconcilers": lambda: [p.pid for p in reconcilers],
                "sandbox": lambda: [box.pid],
                "redis": lambda: [redis_pid] if redis_pid else [],
            }
        )
        # The backends serving this database, sampled while it drains: the machine's PostgreSQL
        # also serves other people's databases, and a backend that lives less than a sample
        # apart is missed, so this is a lower bound.
        backend_cpu: dict[int, list[float]] = {}

        async def sample_backends() -> None:
            for pid in await _backends(conn, args.database):
                seconds = common.cpu_seconds(pid)
                backend_cpu.setdefault(pid, [seconds, seconds])[1] = seconds

        recording = None
        if args.profile:
            recording = profile.record(reconcilers[0].pid, args.profile, PROFILE_RAW)
        cpu_before = [common.cpu_seconds(p.pid) for p in reconcilers]
        meter.start()
        t0 = time.monotonic()
        await sample_backends()
        await conn.execute("UPDATE payments SET next_check_at = now()")
        first_settled = math.nan
        remaining = args.payments
        timeline: list[tuple[float, int]] = []
        deadline = t0 + args.drain_timeout
        while time.monotonic() < deadline:
            remaining = await conn.fetchval(
                "SELECT count(*) FROM payments WHERE status IN ('INITIATED', 'PENDING')"
            )
            now = time.monotonic() - t0
            timeline.append((now, remaining))
            await sample_backends()
            if remaining < args.payments and math.isnan(first_settled):
                first_settled = now
            if remaining == 0:
                break
            await asyncio.sleep(0.25)
        drain = time.monotonic() - t0
        cpu = meter.stop()
        cpu["postgres"] = round(100 * sum(b - a for a, b in backend_cpu.values()) / drain, 1)
        cpu["postgres_backends_seen"] = len(backend_cpu)
        cpu_after = [common.cpu_seconds(p.pid) for p in reconcilers]
        profile_summary = profile.finish(recording, PROFILE_RAW)
        for process in reconcilers:
            process.stop()
        after = await sandbox.get(box, "/control/stats")
        arrivals = (await sandbox.get(box, "/bench/arrivals"))["status_calls"][arrivals_before:]
        truth = {
            p["reference"]: SETTLED.get(p["status"], p["status"])
            for p in (await sandbox.get(box, "/control/payments"))["payments"]
        }
        rows = await conn.fetch(
            "SELECT p.id, p.status, p.attempts, o.status AS order_status FROM payments p"
            " JOIN orders o ON o.id = p.order_id"
        )
        events = Counter(
            r["n"]
            for r in await conn.fetch(
                "SELECT count(*) AS n FROM events WHERE kind = 'payment.status' GROUP BY order_id"
            )
        )
    finally:
        for process in reconcilers:
            process.stop()
        box.stop()
        await conn.close()

    calls = after["counters"].get("status_calls", 0) - before["counters"].get("status_calls", 0)
    wrong_payment = [r["id"] for r in rows if r["status"] != truth.get(r["id"])]
    wrong_order = [r["id"] for r in rows if ORDER_AFTER.get(r["status"]) != r["order_status"]]
    reconciler_cpu = sum(cpu_after) - sum(cpu_before)
    return {
        "payments": args.payments,
        "settled": args.payments - remaining,
        "remaining": remaining,
        "drain_seconds": drain,
        "first_settled_seconds": first_settled,
        "status_calls": calls,
        "calls_per_payment": calls / max(1, args.payments),
        "calls_per_second": _per_second(after),
        "max_calls_in_any_1s_window": sandbox.max_in_window(sorted(arrivals), 1.0),
        # How bursty: a moving window refills in the pattern it was emptied in.
        "max_calls_in_any_100ms_window": sandbox.max_in_window(sorted(arrivals), 0.1),
        "reconciler_idle_cpu_percent": idle_cpu_percent,
        "checks_per_second_overall": (args.payments - remaining) / drain if drain else math.nan,
        "outcomes": dict(Counter(truth.values())),
        "wrong_payment_status": len(wrong_payment),
        "wrong_order_status": len(wrong_order),
        "payment_status_events_per_order": {str(k): v for k, v in sorted(events.items())},
        "orders_without_payment_event": args.payments - sum(events.values()),
        "reconciler_cpu_seconds": reconciler_cpu,
        "reconciler_cpu_ms_per_call": reconciler_cpu * 1000 / max(1, calls),
        "cpu_percent": cpu,
        "sandbox_429": after["counters"].get("status_429", 0),
        "timeline": timeline[:: max(1, len(timeline) // 40)],
        "profile": profile_summary,
    }


def _report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    ps = r["calls_per_second"]
    print()
    print(
        f"reconciler: {r['payments']:,} payments due at once, {args.reconcilers} process(es),"
        f" SANDBOX_RATE_LIMIT={args.rate_limit:g}/second, batch {args.batch},"
        f" concurrency {args.concurrency}; outcomes at the sandbox {r['outcomes']}"
    )
    print(
        common.table(
            [
                "settled",
                "drain s",
                "first settled s",
                "checks/s",
                "calls/s max (any 1 s window)",
                "calls/s mean",
                "calls/payment",
                "reconciler cpu ms/call",
                "reconciler cpu%",
                "sandbox cpu%",
                "postgres cpu% (≥)",
                "redis cpu%",
            ],
            [
                [
                    f"{r['settled']:,}/{r['payments']:,}",
                    r["drain_seconds"],
                    r["first_settled_seconds"],
                    r["checks_per_second_overall"],
                    f"{ps['max']:g} ({r['max_calls_in_any_1s_window']})",
                    ps["mean"],
                    r["calls_per_payment"],
                    r["reconciler_cpu_ms_per_call"],
                    r["cpu_percent"]["reconcilers"],
                    r["cpu_percent"]["sandbox"],
                    r["cpu_percent"]["postgres"],
                    r["cpu_percent"]["redis"],
                ]
            ],
        )
    )
    print(
        f"status calls per second at the sandbox: {ps.get('series')}; at most"
        f" {r['max_calls_in_any_100ms_window']} in any 100 ms"
    )
    print(
        f"reconciler CPU with nothing due: {r['reconciler_idle_cpu_percent']:.1f} % of a core;"
        f" postgres: the backends of this database only"
    )
    limit_held = r["max_calls_in_any_1s_window"] <= args.rate_limit
    correct = (
        r["remaining"] == 0
        and r["wrong_payment_status"] == 0
        and r["wrong_order_status"] == 0
        and r["payment_status_events_per_order"] == {"1": r["payments"]}
    )
    print(
        f"correctness: {r['wrong_payment_status']} payments differ from the sandbox,"
        f" {r['wrong_order_status']} orders in the wrong status, payment.status events per"
        f" order {r['payment_status_events_per_order']}, {r['remaining']} unsettled"
    )
    if r["profile"]:
        print(r["profile"])
    print(
        f"rate limit {args.rate_limit:g}/s {'HELD' if limit_held else 'EXCEEDED'};"
        f" every payment settled right: {'YES' if correct else 'NO'}"
    )


def main() -> None:
    """Parse arguments, run the reconciler benchmark, print the figures (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=10_000)
    parser.add_argument("--rate-limit", type=float, default=100.0, help="status calls/s allowed")
    parser.add_argument("--reconcilers", type=int, default=1, help="python -m reconciler processes")
    parser.add_argument("--approve-share", type=float, default=0.8, help="share approved")
    parser.add_argument("--amount", type=int, default=3000, help="minor units per payment")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--stores", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100, help="RECONCILER_BATCH")
    parser.add_argument("--concurrency", type=int, default=16, help="RECONCILER_CONCURRENCY")
    parser.add_argument("--log-level", default="WARNING", help="the reconcilers' LOG_LEVEL")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--idle", type=float, default=3.0, help="s of reconciler CPU measured with nothing due"
    )
    parser.add_argument("--reconciler-cpu", default="0", help="taskset list for reconcilers")
    parser.add_argument("--loadgen-cpu", default="1", help="cpus for this script and the sandbox")
    parser.add_argument("--database", default="orderstatus_bench_reconciler")
    parser.add_argument(
        "--reconciler-env", type=common.env_pair, action="append", default=[], help="NAME=VALUE"
    )
    parser.add_argument("--drain-timeout", type=float, default=None, help="s (default N/R·2+60)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard time limit")
    parser.add_argument(
        "--profile", type=float, default=0, help="py-spy the first reconciler for this many s"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.drain_timeout is None:
        args.drain_timeout = args.payments / args.rate_limit * 2 + 60

    common.install_sigterm()
    common.pin(args.loadgen_cpu)
    version = common.code_version()
    print(f"code under test: {version}", flush=True)

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(args.max_seconds):
            return await _bench(args)

    result = common.run(bounded())
    result["args"] = {k: v for k, v in vars(args).items() if k != "json"}
    result["code"] = version
    _report(args, result)
    common.write_json(args.json, result)


if __name__ == "__main__":
    main()
