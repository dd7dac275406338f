"""Shared by the benchmarks: the server process, a lean WebSocket client, /proc and /metrics.

The WebSocket client is a bare :class:`asyncio.Protocol` (no task per connection, no per-message
future), so one load-generator core can hold 10,000 sockets and read tens of thousands of
messages a second; the server, not the client, should be what a benchmark measures.
"""

from __future__ import annotations

import asyncio
import base64
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


class CpuMeter:
    """CPU% of named groups of processes between :meth:`start` and :meth:`stop`.

    A group is a function listing its pids, called at both ends (PostgreSQL backends come and
    go; a pid born in the window counts from birth, one that died in it is lost). Also
    ``machine`` (every core, so up to 100 × nproc, from /proc/stat) and ``other``: machine
    minus the groups. In a VM /proc/stat's tick accounting can lag the per-process figures
    (``other`` has come out negative), so take those two as hints; :func:`preemptions` is the
    direct evidence that something else took the server's core.
    """

    def __init__(self, groups: Mapping[str, Callable[[], Iterable[int]]]) -> None:
        self._groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._machine = 0.0
        self._t0 = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        return {
            name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self._groups.items()
        }

    def start(self) -> None:
        """Take the starting sample."""
        self._t0 = time.monotonic()
        self._machine = machine_busy_seconds()
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        """CPU% of each group since :meth:`start` (100 = one core busy)."""
        elapsed = max(1e-9, time.monotonic() - self._t0)
        machine = machine_busy_seconds() - self._machine
        result: dict[str, float] = {}
        for name, pids in self._sample().items():
            begun = self._start.get(name, {})
            used = sum(seconds - begun.get(pid, 0.0) for pid, seconds in pids.items())
            result[name] = round(100.0 * used / elapsed, 1)
        accounted = sum(result.values())
        result["machine"] = round(100.0 * machine / elapsed, 1)
        result["other"] = round(result["machine"] - accounted, 1)
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
