"""A local Redis Cluster for tests: three masters and three replicas on loopback, free ports.

``redis-server --cluster-enabled yes`` per node, then ``redis-cli --cluster create``; the cluster
is ready when every node reports ``cluster_state:ok`` and agrees on the slot map. A test may
kill a master (its replica is promoted within about a second, with the low node timeout set
here) or reshard slots between masters.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from tests.support.ci import in_ci

#: The cluster's failure detection; low so that a failover test takes seconds, not 15 s.
NODE_TIMEOUT_MS = 1000


def cluster_port() -> int:
    """A free port P whose cluster bus port (P + 10000) is free too, so both fit under 65536."""
    while True:
        port = random.randint(20_000, 40_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def cluster_unavailable(reason: str) -> NoReturn:
    """Skip, or fail under any truthy CI, where a missing redis-server is a broken setup."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


@dataclass
class Node:
    """One redis-server of the cluster."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    """Six redis-server processes made into a cluster of three shards, torn down by stop().

    Synchronous, so one cluster can serve a whole session of event loops; a test calls the
    slow steps (reshard, wait_ok) through ``asyncio.to_thread`` to keep its loop running.
    """

    def __init__(
        self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = NODE_TIMEOUT_MS
    ) -> None:
        """Prepare the nodes on free ports; nothing runs until :meth:`start`."""
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if server is None or cli is None:
            cluster_unavailable("redis-server / redis-cli are not installed")
        self._server = server
        self._cli = cli
        self.nodes = [Node(cluster_port()) for _ in range(masters * (1 + replicas))]
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms
        self._dir = Path(tempfile.mkdtemp(prefix="redis-cluster-"))

    @property
    def url(self) -> str:
        """A REDIS_CLUSTER_URL naming every node (any one of them would do)."""
        return "redis://" + ",".join(node.address for node in self.nodes)

    def start(self) -> None:
        """Start every node, create the cluster, and wait until it is ok everywhere."""
        try:
            for node in self.nodes:
                self._start_node(node)
            self._cli_run(
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                str(self._replicas),
                "--cluster-yes",
            )
            self.wait_ok(replicas=self._replicas > 0)
        except BaseException:
            self.stop()
            raise

    def _start_node(self, node: Node) -> None:
        node_dir = self._dir / str(node.port)
        node_dir.mkdir(exist_ok=True)
        node.process = subprocess.Popen(
            [
                self._server,
                *("--port", str(node.port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(self._node_timeout_ms)),
                # Pub/sub needs no data: a replica may take over however stale it is.
                *("--cluster-replica-validity-factor", "0"),
                # A shard down must not stop the others (docs/scaling.md recommends the same).
                *("--cluster-require-full-coverage", "no"),
                # Replicas sync at once instead of after the default 5 s batching delay.
                *("--repl-diskless-sync-delay", "0"),
                *("--save", "", "--appendonly", "no", "--dir", str(node_dir)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.command(node, "PING")
                return
            except (RedisError, OSError):
                if node.process.poll() is not None:
                    pytest.fail(f"redis-server on {node.port} exited at start")
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on {node.port} did not start")
                time.sleep(0.02)

    def _cli_run(self, *args: str) -> str:
        done = subprocess.run(
            [self._cli, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        text = (done.stdout + done.stderr).decode(errors="replace")
        if done.returncode != 0:
            pytest.fail(f"redis-cli {' '.join(args[:2])} failed: {text[-2000:]}")
        return text

    def stop(self) -> None:
        """Kill every node and remove their files."""
        for node in self.nodes:
            self.kill(node)
        shutil.rmtree(self._dir, ignore_errors=True)

    def pause(self, node: Node) -> None:
        """SIGSTOP a node: its sockets stay open but nothing answers (a black hole)."""
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)

    def resume(self, node: Node) -> None:
        """SIGCONT a paused node."""
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)

    def restart(self, node: Node) -> None:
        """Start a killed node again, on its port, with its saved cluster identity."""
        assert not node.alive
        self._start_node(node)

    def _roles(self, node: Node) -> dict[str, str]:
        """Address → "master" or the address of its master, as ``node`` sees the cluster."""
        lines = str(self.command(node, "CLUSTER", "NODES")).splitlines()
        rows = [line.split() for line in lines if line.strip()]
        by_id = {row[0]: row[1].split("@")[0] for row in rows}
        return {
            row[1].split("@")[0]: by_id.get(row[3], "?") if "slave" in row[2] else "master"
            for row in rows
        }

    def _replicas_known(self, alive: list[Node]) -> bool:
        """Every master has an online replica, and every live node knows who replicates whom
        (an election needs the other masters to know the replica)."""
        views = [self._roles(node) for node in alive]
        if any(view != views[0] for view in views):
            return False
        masters = [a for a, role in views[0].items() if role == "master"]
        for master in masters:
            info = str(self.command(self.node(master), "INFO", "replication"))
            if "online" not in info or master not in views[0].values():
                return False
        return True

    def replicas_of(self, address: str) -> list[str]:
        """The addresses of the replicas of master ``address``."""
        return [a for a, role in self._roles(self.alive_nodes()[0]).items() if role == address]

    def kill(self, node: Node) -> None:
        """SIGKILL one node (no clean shutdown) and reap it."""
        process, node.process = node.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused node must not linger
            process.kill()
            process.wait(10)

    def command(self, node: Node, *args: Any) -> Any:
        """Run one command on ``node`` over a fresh connection."""
        client = redis.Redis(
            host="127.0.0.1",
            port=node.port,
            socket_connect_timeout=1,
            socket_timeout=5,
            decode_responses=True,
        )
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def slot_owners(self, node: Node | None = None) -> dict[int, str]:
        """Slot → master address, as ``node`` (default: the first live one) sees it."""
        return {slot: owner for slot, (owner, _) in self._slot_map(node).items()}

    def _slot_map(self, node: Node | None = None) -> dict[int, tuple[str, int]]:
        node = node or self.alive_nodes()[0]
        owners: dict[int, tuple[str, int]] = {}
        for entry in self.command(node, "CLUSTER", "SLOTS"):
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            for slot in range(start, end + 1):
                owners[slot] = (f"{master[0]}:{master[1]}", len(entry) - 3)
        return owners

    def alive_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    def masters(self) -> list[str]:
        """The addresses of the masters that own slots, in slot order."""
        return list(dict.fromkeys(self.slot_owners().values()))

    def node(self, address: str) -> Node:
        return next(node for node in self.nodes if node.address == address)

    def node_id(self, node: Node) -> str:
        return str(self.command(node, "CLUSTER", "MYID"))

    def wait_ok(self, *, replicas: bool = False, within: float = 30.0) -> None:
        """Wait until every live node says cluster_state:ok and all agree on the slot owners
        (with ``replicas``: and every master has a replica)."""
        deadline = time.monotonic() + within
        while True:
            try:
                alive = self.alive_nodes()
                if all("cluster_state:ok" in self.command(n, "CLUSTER", "INFO") for n in alive):
                    maps = [self._slot_map(n) for n in alive]
                    owners = [{s: o for s, (o, _) in m.items()} for m in maps]
                    agreed = all(o == owners[0] and len(o) == 16384 for o in owners)
                    if agreed and (not replicas or self._replicas_known(alive)):
                        return
            except (RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the cluster did not become ok within {within}s")
            time.sleep(0.05)

    def reshard(self, source: str, target: str, slots: int) -> None:
        """Move ``slots`` slots from master ``source`` to master ``target`` (redis-cli)."""
        self._cli_run(
            "--cluster",
            "reshard",
            self.alive_nodes()[0].address,
            "--cluster-from",
            self.node_id(self.node(source)),
            "--cluster-to",
            self.node_id(self.node(target)),
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
        )
        self.wait_ok()


def channel_on(owners: dict[int, str], address: str, prefix: str, start: int = 0) -> str:
    """A channel name starting with ``prefix`` whose slot ``address`` owns."""
    i = start
    while True:
        name = f"{prefix}{i}"
        if owners[key_slot(name.encode())] == address:
            return name
        i += 1
