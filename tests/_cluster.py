"""A private Redis Cluster for the tests: three primaries with one replica each, on free loopback
ports, started once per test session (``redis_cluster`` in conftest.py) and shut down after.

The fault tests kill and restart its nodes; every test that changes the cluster leaves it with
all slots served (``cluster_state:ok``) before it ends.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

NODE_TIMEOUT_MS = 2000
"""``cluster-node-timeout``: how long a primary may be unreachable before its replica takes over."""

_WAIT_SECONDS = 120.0


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too, both not in ``taken`` (which
    gets them)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 10000 > 65535 or {port, port + 10000} & taken:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        taken.update((port, port + 10000))
        return port


def _wait(what: str, check: object, seconds: float = _WAIT_SECONDS) -> None:
    """Poll ``check()`` until it is true; fail naming ``what`` after ``seconds``."""
    assert callable(check)
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test cluster: {what} not within {seconds:.0f} s")
        time.sleep(0.05)


class Node:
    """One redis-server of the cluster, in a directory of its own."""

    def __init__(self, directory: Path, port: int) -> None:
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, socket_connect_timeout=2)

    def start(self) -> None:
        """Start (or restart, with the cluster configuration it wrote) the server."""
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.directory), "--save", "", "--appendonly", "no"),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                *("--logfile", "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
        )
        _wait(f"node {self.address} answering", self._answering)

    def _answering(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server on {self.address} exited: see {self.directory}")
        with self.client() as client:
            return bool(client.ping())

    def kill(self) -> None:
        """SIGKILL: the node gets no chance to do anything more."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def info(self, section: str) -> dict[str, object]:
        with self.client() as client:
            info: dict[str, object] = client.info(section)
            return info

    def node_id(self) -> str:
        with self.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())


class Cluster:
    """Three primaries and three replicas (``redis-cli --cluster create --cluster-replicas 1``)."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="agentmem-cluster-")
        root = Path(self._tmp.name)
        self.nodes: list[Node] = []
        taken: set[int] = set()
        for index in range(6):
            directory = root / str(index)
            directory.mkdir()
            self.nodes.append(Node(directory, _free_cluster_port(taken)))

    @property
    def url(self) -> str:
        """A URL of one node: enough for a cluster client to discover the others."""
        return f"redis://{self.nodes[0].address}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *(n.address for n in self.nodes)),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
        )
        self.wait_healthy()

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def primaries(self) -> list[Node]:
        return [n for n in self.live() if n.info("replication")["role"] == "master"]

    def primary_of(self, key: str) -> Node:
        """The primary that serves ``key``'s slot now."""
        with self.live()[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        for node in self.primaries():
            with node.client() as client:
                for start, end, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end and _ and _[0][1] == node.port:
                        return node
        raise LookupError(f"no primary serves slot {slot}")

    def replica_of(self, primary: Node) -> Node:
        primary_id = primary.node_id()
        for node in self.live():
            replication = node.info("replication")
            if replication["role"] == "slave" and replication["master_port"] == primary.port:
                return node
        raise LookupError(f"no live replica of {primary.address} ({primary_id})")

    def wait_healthy(self) -> None:
        """Until every live node sees every slot served, each primary has a replica in sync
        and every node agrees on who serves which slots."""

        def healthy() -> bool:
            live = self.live()
            if any(n.info("cluster")["cluster_enabled"] != 1 for n in live):
                return False
            for node in live:
                with node.client() as client:
                    if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        return False
            replicas = [n for n in live if n.info("replication")["role"] == "slave"]
            if len(replicas) != len(live) - 3:
                return False
            if any(r.info("replication")["master_link_status"] != "up" for r in replicas):
                return False
            layouts = set()
            for node in live:
                with node.client() as client:
                    slots = client.execute_command("CLUSTER", "SLOTS")
                layouts.add(tuple(sorted((s[0], s[1], s[2][1]) for s in slots)))
            return len(layouts) == 1

        _wait("all slots served, replicas in sync", healthy)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        self._tmp.cleanup()


def redis_cluster_installed() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None
