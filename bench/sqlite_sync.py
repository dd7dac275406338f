"""What SQLite's ``synchronous=FULL`` costs a write: sequential POS status changes, FULL vs NORMAL.

Starts ``python -m server`` on the embedded default (SQLite in WAL mode, in-memory broker) once
per level, creates ``--orders`` cash orders, then sends ``--writes`` ``POST
/api/pos/orders/{id}/status`` one after another (and ``--concurrency`` at a time in a second
pass), and reports the latency and the rate of each. The database lives under
``bench/results/`` (the real disk, not a tmpfs), fresh for every level.

    python -m bench.sqlite_sync --writes 600
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from typing import Any

import httpx

from bench.common import (
    RESULTS,
    ServerProcess,
    code_version,
    install_sigterm,
    run,
    summarize_ms,
    table,
    token,
    write_json,
)

MOVES = ("PREPARING", "READY", "DELIVERED")


async def measure(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    """Latency and rate of sequential and of concurrent status changes on ``server``."""
    customer = {"Authorization": f"Bearer {token('bench-cust')}"}
    pos = {"Authorization": f"Bearer {token('bench-pos', role='pos', store_id='store-1')}"}
    body = {
        "store_id": "store-1",
        "items": [{"sku": "tea", "name": "Tea", "quantity": 1, "unit_price": 100}],
        "currency": "INR",
        "payment_method": "cash",
    }
    result: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
        for label, concurrency in (("sequential", 1), ("concurrent", args.concurrency)):
            orders = []
            for _ in range(-(-args.writes // len(MOVES))):
                r = await http.post("/api/orders", json=body, headers=customer)
                r.raise_for_status()
                orders.append(r.json()["order"]["id"])
            samples: list[float] = []

            async def worker(queue: list[tuple[str, str]], samples: list[float]) -> None:
                while queue:
                    order_id, status = queue.pop(0)
                    started = time.perf_counter()
                    r = await http.post(
                        f"/api/pos/orders/{order_id}/status",
                        json={"status": status},
                        headers=pos,
                    )
                    samples.append(time.perf_counter() - started)
                    r.raise_for_status()

            # Each worker walks whole orders, so no two move the same order at once.
            queues: list[list[tuple[str, str]]] = [[] for _ in range(concurrency)]
            for i, order_id in enumerate(orders):
                queues[i % concurrency].extend((order_id, m) for m in MOVES)
            started = time.perf_counter()
            await asyncio.gather(*(worker(q, samples) for q in queues))
            elapsed = time.perf_counter() - started
            result[label] = {
                "writes": len(samples),
                "per_second": len(samples) / elapsed,
                **summarize_ms(samples),
            }
    return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for level in args.levels:
        directory = RESULTS / f"sqlite_sync_{level.lower()}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        server = ServerProcess(
            env={
                "DATABASE_URL": f"sqlite+aiosqlite:///{directory}/bench.db",
                "REDIS_URL": "",
                "SQLITE_SYNCHRONOUS": level,
            },
            cpu=args.server_cpu,
            log_path=directory / "server.log",
        )
        server.start()
        try:
            await server.wait_ready()
            results[level] = await measure(server, args)
        finally:
            server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--levels", nargs="+", default=["FULL", "NORMAL"])
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--json")
    args = parser.parse_args()
    install_sigterm()
    version = code_version()
    print(f"code under test: {version}", flush=True)

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(args.max_seconds):
            return await bench(args)

    results = run(bounded())
    rows = []
    for level, passes in results.items():
        for label, r in passes.items():
            rows.append(
                [
                    level,
                    label,
                    r["writes"],
                    f"{r['per_second']:.0f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    f"{r['max_ms']:.2f}",
                ]
            )
    print(table(["synchronous", "pass", "writes", "writes/s", "p50 ms", "p99 ms", "max ms"], rows))
    write_json(args.json, {"results": results, "code": version, "args": vars(args)})


if __name__ == "__main__":
    main()
