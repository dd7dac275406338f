"""Shared by the benchmarks: the server process, a lean WebSocket client, /proc and /metrics.

The WebSocket client is a bare :class:`asyncio.Protocol` (no task per connection, no per-message
future), so one load-generator core can hold 10,000 sockets and read tens of thousands of
messages a second; the server, not the client, should be what a benchmark measures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import math
import os
import resource
import secrets
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import jwt
import uvloop

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-0123456789-0123456789-abcdef"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_HOST = "postgresql+asyncpg://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/0"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ---------------------------------------------------------------------------------


def raise_nofile(want: int = 65_536) -> int:
    """Raise this process's open-file limit as far as allowed; the new soft limit.

    Without CAP_SYS_RESOURCE (a container) the hard limit is the ceiling.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (want, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            return limit
        except (ValueError, OSError):
            continue
    return soft


def pin(cpus: str | None) -> None:
    """Pin this process (and the children it starts later) to ``cpus`` ("1" or "0,1")."""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def recreate_database(name: str) -> str:
    """Drop and create the PostgreSQL database ``name``; its SQLAlchemy URL."""
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{PG_HOST}/{name}"


@dataclass
class ServerProcess:
    """``python -m server`` pinned to ``cpu`` with a raised fd limit; killed on stop, always."""

    env: dict[str, str]
    cpu: str | None = "0"
    module: str = "server"
    nofile: int = field(default_factory=lambda: resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    port: int = field(default_factory=free_port)
    log_path: Path = field(default_factory=lambda: RESULTS / "server.log")
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """The server's http:// base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id (prlimit and taskset exec into python: one pid)."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start the process (returns at once; see :meth:`wait_ready`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
            "JWT_SECRET": SECRET,
            "DEMO_TOKENS": "false",
            **self.env,
        }
        command = ["prlimit", f"--nofile={self.nofile}:{self.nofile}"]
        if self.cpu:
            command += ["taskset", "-c", self.cpu]
        command += [sys.executable, "-m", self.module]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until /readyz is 200 (database reachable, broker delivering)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(self.base + "/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server printed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group; idempotent."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a benchmark server on PostgreSQL + Redis, with a fresh channel prefix."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_CHANNEL_PREFIX": f"bench{secrets.token_hex(4)}:",
        "WS_MAX_CONNECTIONS_PER_USER": "10",
        **extra,
    }


def install_sigterm() -> None:
    """Turn SIGTERM into SystemExit so every ``finally`` (and the server kill) runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# -- /proc -------------------------------------------------------------------------------------


def env_pair(raw: str) -> tuple[str, str]:
    """argparse type for --server-env NAME=VALUE."""
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name, value


def run_bench(
    args: argparse.Namespace,
    bench: Callable[[argparse.Namespace, ServerProcess], Coroutine[Any, Any, dict[str, Any]]],
    report: Callable[[argparse.Namespace, dict[str, Any]], None],
) -> None:
    """Run one benchmark end to end: pin, start the server, bound the run, always stop the
    server, then print and (with --json) save the results with the code version."""
    install_sigterm()
    raise_nofile()
    pin(args.loadgen_cpu)
    server = ServerProcess(env={}, cpu=args.server_cpu, module=args.server_module)
    version = code_version()
    print(f"code under test: {version}", flush=True)

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(args.max_seconds):
            return await bench(args, server)

    try:
        result = run(bounded())
    finally:
        server.stop()
    result["args"] = {k: v for k, v in vars(args).items() if k != "json"}
    result["code"] = version
    report(args, result)
    write_json(args.json, result)


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def preemptions(pid: int) -> int:
    """How often ``pid`` (all threads) was descheduled while it still wanted the CPU so far."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/status") as fh:
                for line in fh:
                    if line.startswith("nonvoluntary_ctxt_switches:"):
                        total += int(line.split()[1])
    except OSError:
        pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far, in seconds.

    Includes the CPU of children it has reaped, so PostgreSQL's postmaster carries the time of
    backends that exited (overflow pool connections come and go under load).
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields_ = stat[stat.rindex(")") + 2 :].split()
    return sum(int(v) for v in fields_[11:15]) / CLK_TCK


def pids_named(name: str) -> list[int]:
    """Every process whose comm is ``name`` (e.g. every PostgreSQL backend)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().strip() == name:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def redis_pid() -> int | None:
    """The Redis server's pid, from INFO."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None
    finally:
        client.close()


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    # guest time is already counted in user.
    return (sum(values[:8]) - idle) / CLK_TCK


def machine_steal_seconds() -> float:
    """CPU seconds the hypervisor gave this VM's vCPUs to someone else since boot (all cores)."""
    with open("/proc/stat") as fh:
        return int(fh.readline().split()[8]) / CLK_TCK


class CpuMeter:
    """CPU% of named groups of processes between :meth:`start` and :meth:`stop`.

    A group is a function listing its pids, called at both ends (PostgreSQL backends come and
    go; a pid born in the window counts from birth, one that died in it is lost). Also
    ``machine`` (every core, so up to 100 × nproc, from /proc/stat) and ``other``: machine
    minus the groups. In a VM /proc/stat's tick accounting can lag the per-process figures
    (``other`` has come out negative), so take those two as hints; :func:`preemptions` is the
    direct evidence that something else took the server's core. ``steal``: CPU% the hypervisor
    took from this VM's vCPUs (included in ``machine``).
    """

    def __init__(self, groups: Mapping[str, Callable[[], Iterable[int]]]) -> None:
        self._groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._machine = 0.0
        self._steal = 0.0
        self._t0 = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        return {
            name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self._groups.items()
        }

    def start(self) -> None:
        """Take the starting sample."""
        self._t0 = time.monotonic()
        self._machine = machine_busy_seconds()
        self._steal = machine_steal_seconds()
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        """CPU% of each group since :meth:`start` (100 = one core busy)."""
        elapsed = max(1e-9, time.monotonic() - self._t0)
        machine = machine_busy_seconds() - self._machine
        steal = machine_steal_seconds() - self._steal
        result: dict[str, float] = {}
        for name, pids in self._sample().items():
            begun = self._start.get(name, {})
            used = sum(seconds - begun.get(pid, 0.0) for pid, seconds in pids.items())
            result[name] = round(100.0 * used / elapsed, 1)
        accounted = sum(result.values())
        result["machine"] = round(100.0 * machine / elapsed, 1)
        result["other"] = round(result["machine"] - accounted, 1)
        result["steal"] = round(100.0 * steal / elapsed, 1)
        return result


# -- /metrics ----------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {"name{labels}": value}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, raw = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            values[key] = float(raw)
    return values


def gc_summary(values: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Per generation: how many collections, their total and their mean pause (ms)."""
    out: dict[str, dict[str, float]] = {}
    for gen in ("0", "1", "2"):
        count = values.get(f'python_gc_pause_seconds_count{{generation="{gen}"}}')
        total = values.get(f'python_gc_pause_seconds_sum{{generation="{gen}"}}')
        if count is None or total is None:
            continue
        over_100ms = count - values.get(
            f'python_gc_pause_seconds_bucket{{generation="{gen}",le="0.1"}}', count
        )
        out[gen] = {
            "count": count,
            "total_ms": total * 1000,
            "mean_ms": total * 1000 / count if count else 0.0,
            "over_100ms": over_100ms,
        }
    return out


def gc_window(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """GC in a window: collections per generation, and the histogram bucket bounding the worst.

    ``worst_le_ms`` is the upper bound of the smallest bucket holding every pause of the window
    (the histogram cannot say more; inf if one exceeded the top bucket).
    """
    out: dict[str, float] = {}
    buckets: dict[float, float] = {}
    total = 0.0
    for key, value in after.items():
        if not key.startswith("python_gc_pause_seconds_"):
            continue
        delta = value - before.get(key, 0.0)
        if key.startswith("python_gc_pause_seconds_count"):
            gen = key.split('generation="')[1].split('"')[0]
            out[f"gen{gen}"] = delta
            total += delta
        elif key.startswith("python_gc_pause_seconds_bucket"):
            le = key.split('le="')[1].split('"')[0]
            bound = math.inf if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + delta
    worst = math.nan
    for bound in sorted(buckets):
        if buckets[bound] >= total:
            worst = bound * 1000 if total else 0.0
            break
    out["worst_le_ms"] = worst
    return out


def histogram_window(
    before: Mapping[str, float], after: Mapping[str, float], name: str
) -> dict[str, float]:
    """A histogram's observations in a window: count, mean (ms), and the share above each bucket."""
    count = (after.get(f"{name}_count") or 0.0) - (before.get(f"{name}_count") or 0.0)
    total = (after.get(f"{name}_sum") or 0.0) - (before.get(f"{name}_sum") or 0.0)
    out = {"count": count, "mean_ms": total * 1000 / count if count else math.nan}
    prefix = f'{name}_bucket{{le="'
    for key, value in after.items():
        if key.startswith(prefix):
            le = key[len(prefix) : -2]
            if le != "+Inf":
                below = value - before.get(key, 0.0)
                out[f"over_{float(le) * 1000:g}ms"] = count - below
    return out


def metric(values: Mapping[str, float], name: str) -> float | None:
    """The sum of every series of ``name``; None if the server does not export it."""
    total = None
    for key, value in values.items():
        if key == name or key.startswith(name + "{"):
            total = (total or 0.0) + value
    return total


async def scrape(base: str) -> dict[str, float]:
    """GET /metrics, parsed."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(base + "/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)


# -- tokens ------------------------------------------------------------------------------------


def token(sub: str, *, role: str = "customer", store_id: str | None = None) -> str:
    """A bench token valid for two hours."""
    claims: dict[str, Any] = {"sub": sub, "role": role, "exp": int(time.time() + 7200)}
    if store_id is not None:
        claims["store_id"] = store_id
    return jwt.encode(claims, SECRET, algorithm="HS256")


# -- statistics and output ---------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan if empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize_ms(samples_s: Iterable[float]) -> dict[str, float]:
    """count, p50, p90, p99, p99.9 and max of latencies given in seconds, in milliseconds."""
    ordered = sorted(samples_s)
    return {
        "count": float(len(ordered)),
        "p50_ms": percentile(ordered, 50) * 1000,
        "p90_ms": percentile(ordered, 90) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "p999_ms": percentile(ordered, 99.9) * 1000,
        "max_ms": (ordered[-1] * 1000) if ordered else math.nan,
    }


def fmt(value: object) -> str:
    """A table cell."""
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [line(list(headers)), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def code_version() -> str:
    """The commit under test, with ``+dirty:<files>`` when server/ or channels/ have edits."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "server", "channels"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split()
    except OSError:
        return "unknown"
    files = [f for f in dirty if "/" in f]
    return head + (f"+dirty:{','.join(files)}" if files else "")


def write_json(path: str | None, document: Mapping[str, Any]) -> None:
    """Write ``document`` to ``path`` (if given), NaN as null."""
    if not path:
        return

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    Path(path).write_text(json.dumps(clean(dict(document)), indent=2) + "\n")


def chunks(items: Sequence[T], n: int) -> Iterator[Sequence[T]]:
    """``items`` split into ``n`` nearly equal contiguous slices."""
    size, extra = divmod(len(items), n)
    start = 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        yield items[start:end]
        start = end


# -- a lean WebSocket client -------------------------------------------------------------------


class WsError(Exception):
    """The handshake was refused or the connection failed."""


def _mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    if not payload:
        return key
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return key + masked.to_bytes(len(payload), "big")


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payloads under 64 KiB)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return header + _mask(payload)


class WsClient(asyncio.Protocol):
    """One client WebSocket; every text message goes to ``on_text`` (bytes) as it arrives."""

    def __init__(self, request: bytes, on_text: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self._request = request
        self._on_text = on_text
        self._buf = bytearray()
        self._fragments: list[bytes] | None = None
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport quacks like asyncio.Transport without subclassing it.
        self.transport = typing.cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(WsError(f"connection lost before upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 101 " not in status:
                if not self.opened.done():
                    self.opened.set_exception(WsError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            del buf[: end + 4]
            self._upgraded = True
            self.opened.set_result(None)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > n:
                break
            payload = bytes(buf[pos + head : end])
            pos = end
            self._frame(b0, payload)
        if pos:
            del buf[:pos]

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode in (1, 2):
            if fin:
                self._on_text(payload)
            else:
                self._fragments = [payload]
        elif opcode == 0 and self._fragments is not None:
            self._fragments.append(payload)
            if fin:
                whole, self._fragments = b"".join(self._fragments), None
                self._on_text(whole)
        elif opcode == 9:  # ping → pong
            self._write(_frame(0xA, payload))
        elif opcode == 8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._write(_frame(0x8, payload[:2]))
            if self.transport is not None:
                self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: str) -> None:
        """Send one text message."""
        self._write(_frame(0x1, text.encode()))

    def close(self) -> None:
        """Send a 1000 close and drop the connection."""
        self._write(_frame(0x8, (1000).to_bytes(2, "big")))
        if self.transport is not None:
            self.transport.close()


async def ws_connect(
    port: int,
    tok: str,
    on_text: Callable[[bytes], None],
    *,
    host: str = "127.0.0.1",
    path: str = "/ws",
    timeout: float = 30.0,
) -> WsClient:
    """Open ``ws://host:port/path`` with ``Authorization: Bearer tok``; WsError if refused."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {tok}\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, client = await loop.create_connection(lambda: WsClient(request, on_text), host, port)
        await client.opened
    return client


# -- a lean HTTP/1.1 client --------------------------------------------------------------------

# What a request's callback gets: the HTTP status (0: the connection failed before an answer,
# and the body is the reason), the body, and the time.time() the request was written.
ResponseCallback = Callable[[int, bytes, float], None]


def http_request(
    method: str,
    path: str,
    host: str,
    *,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A complete HTTP/1.1 request (keep-alive; a body is sent as JSON)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("latin-1") + body


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of an :class:`HttpPool`.

    Requests are written whole; responses are matched to them in order (pipelining is allowed
    by HTTP/1.1 and by uvicorn). Only the status line, Content-Length and Connection are parsed:
    enough for a server that always sends Content-Length, as Starlette's responses do.
    """

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.inflight: collections.deque[tuple[ResponseCallback, float]] = collections.deque()
        self.idle_since = 0.0
        self.listed = False  # in the pool's ready queue
        self.closed = False
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        self.idle_since = self.pool.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f"connection lost: {exc or 'closed by server'}".encode()
        inflight, self.inflight = self.inflight, collections.deque()
        for callback, sent in inflight:
            callback(0, reason, sent)
        self.pool._lost(self)

    def send(self, data: bytes, callback: ResponseCallback) -> None:
        assert self.transport is not None
        self.inflight.append((callback, time.time()))
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        keep_alive = True
        while self.inflight:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            try:
                status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 17)
                    length = int(head[at + 17 : stop if stop >= 0 else len(head)])
                elif status in (204, 304) or status < 200:
                    length = 0
                else:
                    raise ValueError("no Content-Length (chunked or close-delimited)")
            except ValueError as exc:
                self.pool.protocol_errors += 1
                self._fail(f"bad response: {exc}")
                return
            total = end + 4 + length
            if len(buf) < total:
                break
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            if b"\r\nconnection: close" in head:
                keep_alive = False
            callback, sent = self.inflight.popleft()
            callback(status, body, sent)
            if not keep_alive:
                break
        if not keep_alive:
            self.closed = True
            self.close()
            return
        if not self.inflight:
            self.idle_since = self.pool.loop.time()
        self.pool._ready_again(self)

    def _fail(self, reason: str) -> None:
        self.closed = True
        self._buf.clear()
        self.close()  # connection_lost fails what is still in flight
        if self.inflight:
            callback, sent = self.inflight.popleft()
            callback(0, reason.encode(), sent)


class HttpPool:
    """N keep-alive HTTP/1.1 connections on bare :class:`asyncio.Protocol` s, and a FIFO queue.

    :meth:`request` hands a prebuilt request (:func:`http_request`) and a callback to the next
    connection with room (``depth`` requests in flight per connection: 1 = one at a time,
    more = pipelined), or queues it. No task, future or per-request object beyond a tuple, so
    the load generator spends its CPU on sending and receiving, not on an HTTP library. A
    connection the server closed is replaced (bounded retries); one idle longer than
    ``max_idle`` seconds is replaced before use, so uvicorn's keep-alive timeout (5 s) never
    closes a socket under a request being written. Requests that were sent and lost with their
    connection are reported (status 0), never retried: a retried POST could apply twice.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connections: int = 32,
        depth: int = 1,
        max_idle: float = 3.0,
        reconnect_attempts: int = 20,
    ) -> None:
        self.host, self.port = host, port
        self.size, self.depth, self.max_idle = connections, max(1, depth), max_idle
        self.reconnect_attempts = reconnect_attempts
        self.loop = asyncio.get_running_loop()
        self.queue: collections.deque[tuple[bytes, ResponseCallback]] = collections.deque()
        self.connections: set[HttpConnection] = set()
        self.reconnects = 0
        self.protocol_errors = 0
        self._ready: collections.deque[HttpConnection] = collections.deque()
        self._opening: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def hostport(self) -> str:
        """The Host header's value."""
        return f"{self.host}:{self.port}"

    async def open(self, timeout: float = 30.0) -> None:
        """Open every connection; raises if one cannot be opened."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(self._connect() for _ in range(self.size)))

    async def _connect(self) -> None:
        _, conn = await self.loop.create_connection(
            lambda: HttpConnection(self), self.host, self.port
        )
        if self._closing:
            conn.close()
            return
        self.connections.add(conn)
        self._ready_again(conn)

    def request(self, data: bytes, callback: ResponseCallback) -> None:
        """Send ``data`` when a connection has room; ``callback`` gets the answer."""
        self.queue.append((data, callback))
        self._pump()

    def _pump(self) -> None:
        ready, queue, depth = self._ready, self.queue, self.depth
        now = self.loop.time()
        while queue and ready:
            conn = ready.popleft()
            if conn.closed:
                conn.listed = False
                continue
            if not conn.inflight and now - conn.idle_since > self.max_idle:
                conn.listed = False
                conn.closed = True
                conn.close()  # replaced in _lost
                continue
            conn.send(*queue.popleft())
            if len(conn.inflight) < depth:
                ready.append(conn)  # round robin while pipelining
            else:
                conn.listed = False

    def _ready_again(self, conn: HttpConnection) -> None:
        if not conn.listed and not conn.closed and len(conn.inflight) < self.depth:
            conn.listed = True
            self._ready.append(conn)
        self._pump()

    def _lost(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if self._closing:
            return
        task = self.loop.create_task(self._replace())
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _replace(self) -> None:
        for attempt in range(self.reconnect_attempts):
            try:
                await self._connect()
                self.reconnects += 1
                return
            except OSError:
                await asyncio.sleep(0.1 * (attempt + 1))
        if not self.connections and len(self._opening) <= 1:
            queued, self.queue = self.queue, collections.deque()
            for _, callback in queued:
                callback(0, b"no connection to the server", time.time())

    def in_flight(self) -> int:
        """Requests queued or sent and not yet answered."""
        return len(self.queue) + sum(len(c.inflight) for c in self.connections)

    def close(self) -> None:
        """Close every connection; queued requests are dropped."""
        self._closing = True
        for task in self._opening:
            task.cancel()
        for conn in list(self.connections):
            conn.close()
        self.queue.clear()
