"""What one idle WebSocket connection costs the server, and where that memory is.

    python -m bench.memprofile --customers 2000

Runs the server (PostgreSQL + Redis, as the other benchmarks) under tracemalloc, connects
``--customers`` idle customers, and compares a snapshot taken before with one taken after:
Python-heap bytes per connection by allocating line, and gc-tracked objects per connection by
type. RSS per connection is printed too, but tracemalloc's own bookkeeping inflates it: for RSS
run with ``--rss-only`` (tracemalloc off; the object census still runs), or take it from
``bench.fanout``. ``WS_IMPL`` in the environment picks the server's WebSocket implementation.
The server process runs this module with ``--serve``: it starts tracemalloc, then
``python -m server``; SIGUSR1 makes it write a snapshot and an object census to
``BENCH_MEMPROFILE_DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from bench import common


def _serve() -> None:
    """The server side: tracemalloc on, a SIGUSR1 handler, then the real server."""
    frames = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "1"))
    if frames > 0:
        tracemalloc.start(frames)
    out = Path(os.environ["BENCH_MEMPROFILE_DIR"])
    taken = 0

    def snapshot(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        # The server's GC policy freezes long-lived objects, and gc.get_objects() does not list
        # frozen ones: hand them back to the collector for the census, then freeze again.
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        gc.collect()
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(out / f"snap{taken}.bin"))
        census = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        census["(frozen by the server before the census)"] = frozen
        if frozen:
            gc.freeze()
        (out / f"types{taken}.json").write_text(json.dumps(census))
        (out / f"done{taken}").write_text("")
        taken += 1

    signal.signal(signal.SIGUSR1, snapshot)
    from server.__main__ import run

    run()


async def _take(server: common.ServerProcess, out: Path, index: int) -> None:
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not (out / f"done{index}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the server wrote no snapshot")
        await asyncio.sleep(0.1)


async def _bench(args: argparse.Namespace, server: common.ServerProcess) -> dict[str, Any]:
    out = common.RESULTS / "memprofile"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    database_url = await common.recreate_database(args.database)
    server.env = common.server_env(
        database_url,
        BENCH_MEMPROFILE_DIR=str(out),
        BENCH_TRACEMALLOC_FRAMES="0" if args.rss_only else "1",
    )
    server.start()
    await server.wait_ready()
    # A few connections first, so one-off costs (pools, caches, code paths) are in the baseline.
    warm = [
        await common.ws_connect(server.port, common.token(f"warm-{i}"), _ignore) for i in range(20)
    ]
    await asyncio.sleep(1)
    await _take(server, out, 0)
    rss_before = common.rss_kib(server.pid)
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def one(i: int) -> common.WsClient:
        async with gate:
            return await common.ws_connect(server.port, common.token(f"mem-{i:06d}"), _ignore)

    clients = await asyncio.gather(*(one(i) for i in range(args.customers)))
    await asyncio.sleep(args.settle)
    rss_after = common.rss_kib(server.pid)
    await _take(server, out, 1)
    n = len(clients)

    by_line: list[tracemalloc.StatisticDiff] = []
    by_file: list[tracemalloc.StatisticDiff] = []
    if not args.rss_only:
        before = tracemalloc.Snapshot.load(str(out / "snap0.bin"))
        after = tracemalloc.Snapshot.load(str(out / "snap1.bin"))
        by_line = after.compare_to(before, "lineno")
        by_file = after.compare_to(before, "filename")
    heap = sum(s.size_diff for s in by_line)
    types0: dict[str, int] = json.loads((out / "types0.json").read_text())
    types1: dict[str, int] = json.loads((out / "types1.json").read_text())
    frozen_key = "(frozen by the server before the census)"
    frozen = types1.pop(frozen_key, 0) - types0.pop(frozen_key, 0)
    objects = Counter({k: v - types0.get(k, 0) for k, v in types1.items()})
    for client in [*clients, *warm]:
        client.close()
    await asyncio.sleep(0.5)
    return {
        "connections": n,
        "rss_per_connection_bytes": (rss_after - rss_before) * 1024 / n,
        "heap_per_connection_bytes": heap / n,
        "gc_objects_per_connection": sum(objects.values()) / n,
        "gc_objects_total": sum(types1.values()),
        "frozen_per_connection": frozen / n,
        "by_file": [
            (str(s.traceback[0].filename), s.size_diff / n, s.count_diff / n)
            for s in by_file[: args.top]
        ],
        "by_line": [
            (
                f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                s.size_diff / n,
                s.count_diff / n,
            )
            for s in by_line[: args.top]
        ],
        "objects": [(name, count / n) for name, count in objects.most_common(args.top)],
    }


def _ignore(payload: bytes) -> None:
    pass


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def main() -> None:
    """Connect idle customers to a tracemalloc'd server; print the memory per connection."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--loadgen-cpu", default="1")
    parser.add_argument("--database", default="orderstatus_bench")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--rss-only",
        action="store_true",
        help="tracemalloc off: true RSS per connection and the object census, no heap by line",
    )
    args = parser.parse_args()
    if args.serve or os.environ.get("BENCH_MEMPROFILE_DIR"):
        _serve()
        return
    common.install_sigterm()
    common.raise_nofile()
    common.pin(args.loadgen_cpu)
    server = common.ServerProcess(env={}, cpu=args.server_cpu, module="bench.memprofile")
    version = common.code_version()
    print(f"code under test: {version}, WS_IMPL={os.environ.get('WS_IMPL', 'default')}", flush=True)
    try:
        result = common.run(_bench(args, server))
    finally:
        server.stop()
    result["code"] = version
    result["ws_impl"] = os.environ.get("WS_IMPL", "default")
    n = result["connections"]
    print(
        f"{n:,} idle connections: {result['rss_per_connection_bytes'] / 1024:.1f} KiB RSS each"
        f"{'' if args.rss_only else ' (inflated by tracemalloc)'},"
        f" {result['heap_per_connection_bytes'] / 1024:.1f} KiB of"
        f" Python heap each, {result['gc_objects_per_connection']:.0f} gc-tracked objects each"
        f" ({result['gc_objects_total']:,} in the process; the server had frozen"
        f" {result['frozen_per_connection']:.0f} per connection by the time of the census)"
    )
    print(
        common.table(
            ["Python heap per connection, by file", "bytes", "blocks"],
            [(_short(f), b, c) for f, b, c in result["by_file"]],
        )
    )
    print(
        common.table(
            ["by line", "bytes", "blocks"], [(_short(f), b, c) for f, b, c in result["by_line"]]
        )
    )
    print(common.table(["gc-tracked objects per connection", "count"], result["objects"]))
    common.write_json(args.json, result)


if __name__ == "__main__":
    main()
