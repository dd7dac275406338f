"""Where the server's CPU goes: record it with py-spy, summarize the samples.

    python -m bench.profile RAW_FILE [--top 40]

The benchmarks take ``--profile SECONDS`` to record the server with py-spy during the measured
phase (``py-spy`` must be on PATH or in the virtualenv: ``.venv/bin/pip install py-spy``);
sampling pauses the server briefly, so a profiled run's latencies are not the reported ones.
Only samples where the server holds the GIL are kept (``--gil``): the CPU it spends in Python.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy executable, if installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes] | None:
    """Record ``pid`` for ``seconds`` into ``out`` (collapsed stacks); None without py-spy."""
    exe = py_spy()
    if exe is None:
        print("py-spy not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate)]
    command += ["-f", "raw", "--gil", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(process: subprocess.Popen[bytes] | None, out: Path, top: int = 30) -> str:
    """Wait for a recording to end and summarize it ("" if there was none)."""
    if process is None:
        return ""
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    if not out.exists():
        return f"py-spy wrote nothing (exit {process.returncode})"
    return summarize(out, top)


def _where(frame: str) -> tuple[str, str]:
    name, _, location = frame.partition(" (")
    file = location.split(":")[0]
    return name, file


def _package(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/")[1].split("/")[0]
    if file.startswith(("server/", "channels/", "reconciler/")):
        return file
    return file.split("/")[0] if "/" in file else (file or "?")


# What a sample was doing, by the first rule its stack matches (stack files, frame names).
# SQLAlchemy runs the database calls in greenlets, which py-spy shows as stacks of their own
# (rooted in sqlalchemy/, not under the request that started them): the file rules catch both.
_ACTIVITIES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("database: SQLAlchemy + asyncpg", ("sqlalchemy/", "asyncpg/"), ()),
    ("broker: Redis publish and subscribe", ("redis/",), ("publish_many",)),
    (
        "hub: WebSocket fan-out",
        ("websockets/", "uvicorn/protocols/websockets/", "channels/"),
        ("Hub.",),
    ),
    ("HTTP request, outside the above", (), ("RequestResponseCycle", "HttpToolsProtocol")),
)


def _activity(frames: list[str]) -> str:
    files = [_where(frame)[1] for frame in frames]
    stack = ";".join(frames)
    for label, prefixes, names in _ACTIVITIES:
        if any(f.startswith(prefixes) for f in files) or any(n in stack for n in names):
            return label
    return "event loop and the rest"


def summarize(path: Path, top: int = 30) -> str:
    """Self time by package and by activity, and the functions with the most inclusive time."""
    by_package: Counter[str] = Counter()
    by_activity: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        by_package[_package(_where(frames[-1])[1])] += n
        by_activity[_activity(frames)] += n
        seen = set()
        for frame in frames:
            name, file = _where(frame)
            key = f"{name} ({file})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
    if not total:
        return "no samples"
    lines = [f"py-spy: {total} samples with the GIL held ({path})", "self time by package:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_package.most_common(15)]
    lines.append("by activity (whole stack):")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_activity.most_common()]
    lines.append("inclusive time by function:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    """Summarize a raw py-spy recording."""
    parser = argparse.ArgumentParser(description="Summarize a py-spy raw (collapsed) recording.")
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    print(summarize(args.raw, args.top))


if __name__ == "__main__":
    main()
