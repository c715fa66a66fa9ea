"""A real 3-node NATS JetStream cluster on loopback, for tests and benchmarks.

The same shape as ``docker-compose.yml``: one cluster name, a unique ``server_name`` per
node, every node soliciting routes to all three, JetStream with its own store, and (given
a key store) JWT auth with a full account resolver on every node. Each node
gets free client and route ports, so several clusters can run side by side.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.js import api

from shoal.auth import KeyStore, operator_block
from shoal.ops.server import find_nats_server, free_port, nats_url, port_open

__all__ = ["ClusterNode", "NatsCluster"]


@dataclass
class ClusterNode:
    """One nats-server of the cluster: its name, ports, store and process."""

    name: str
    home: Path
    port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return nats_url(self.port)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config(self, cluster_name: str, routes: list[str], auth: KeyStore | None = None) -> str:
        # json.dumps quotes strings the way the NATS config parser accepts them.
        block = operator_block(auth, self.home / "accounts") if auth is not None else ""
        return block + (
            f"server_name: {json.dumps(self.name)}\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.home / 'jetstream'))} }}\n"
            "cluster {\n"
            f"  name: {json.dumps(cluster_name)}\n"
            f"  listen: 127.0.0.1:{self.route_port}\n"
            f"  routes: {json.dumps(routes)}\n"
            "}\n"
        )

    def monitor(self, endpoint: str) -> dict[str, Any] | None:
        """This node's monitoring ``endpoint`` (``varz``, ``jsz``…), or None if it fails."""
        url = f"http://127.0.0.1:{self.http_port}/{endpoint}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                answer = json.load(response)
        except (OSError, ValueError):
            return None
        return answer if isinstance(answer, dict) else None

    def varz_name(self) -> str | None:
        """The ``server_name`` the process on this node's HTTP port reports."""
        varz = self.monitor("varz") or {}
        return varz.get("server_name")

    def meta_leader(self) -> str | None:
        """The JetStream meta leader this node knows of (monitoring ``/jsz``), if any."""
        jsz = self.monitor("jsz") or {}
        leader = (jsz.get("meta_cluster") or {}).get("leader")
        return str(leader) if leader else None

    def start(self, cluster_name: str, routes: list[str], auth: KeyStore | None = None) -> None:
        (self.home / "accounts").mkdir(parents=True, exist_ok=True)
        conf = self.home / "nats-server.conf"
        conf.write_text(self.config(cluster_name, routes, auth))
        with (self.home / "nats-server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(find_nats_server()), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no leadership hand-off, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class NatsCluster:
    """``size`` nats-servers routed to each other on 127.0.0.1 under ``root``."""

    root: Path
    size: int = 3
    name: str = "shoal"
    nodes: list[ClusterNode] = field(default_factory=list)
    auth: KeyStore | None = None
    """With a key store every node runs JWT auth (its operator, accounts, full resolver)."""

    @property
    def admin_creds(self) -> str | None:
        return str(self.auth.creds_path("admin")) if self.auth is not None else None

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = self._new_nodes(self.root)

    def _new_nodes(self, home: Path) -> list[ClusterNode]:
        return [ClusterNode(f"{self.name}-n{i + 1}", home / f"n{i + 1}") for i in range(self.size)]

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node, alive or not."""
        return [node.url for node in self.nodes]

    @property
    def routes(self) -> list[str]:
        return [f"nats-route://127.0.0.1:{node.route_port}" for node in self.nodes]

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self, timeout: float = 10.0, attempts: int = 3) -> NatsCluster:
        """Start every node and wait until each accepts client connections.

        The nine ports are picked free but only bound when the servers start, so a process
        started meanwhile (other test suites pick free ports too) can take one: a node that
        dies at start is retried, with fresh ports and stores, ``attempts`` times.
        """
        for attempt in range(1, attempts + 1):
            for node in self.nodes:
                node.start(self.name, self.routes, self.auth)
            failed = self._wait_for_ports(timeout)
            if failed is None:
                return self
            self.stop()
            if attempt == attempts:
                raise RuntimeError(f"cluster node {failed.name} did not start; see {failed.home}")
            self.nodes = self._new_nodes(self.root / f"retry-{attempt}")
        return self

    def _wait_for_ports(self, timeout: float) -> ClusterNode | None:
        """None once every node serves its ports, else the first node that did not.

        An open port alone proves nothing if another process took it, so each node must
        also answer ``/varz`` with its own name, and still be alive a moment later (a
        server that cannot bind one of its ports exits).
        """
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while not (port_open(node.port) and node.varz_name() == node.name):
                if not node.alive or time.monotonic() > deadline:
                    return node
                time.sleep(0.02)
        time.sleep(0.2)
        return next((node for node in self.nodes if not node.alive), None)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    async def wait_for_jetstream(self, timeout: float = 20.0) -> str:
        """Wait until every live node agrees on a live JetStream meta leader; return its name.

        In a cluster the JetStream API (creating streams and consumers) goes through the
        meta leader; until one is elected (after start, or after the old one died) such
        requests fail or time out.
        """
        deadline = time.monotonic() + timeout
        while True:
            live = [node for node in self.nodes if node.alive]
            seen = {await asyncio.to_thread(node.meta_leader) for node in live}
            leader = seen.pop() if len(seen) == 1 else None
            if leader is not None and leader in {node.name for node in live}:
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"no agreed JetStream meta leader within {timeout}s")
            await asyncio.sleep(0.1)

    async def wait_for_placement(self, timeout: float = 20.0) -> None:
        """Wait until a fresh cluster can place a stream on all its nodes.

        A meta leader alone is not enough: until it has heard from every peer it refuses
        R3 placement ("no suitable peers for placement, peer offline"). A probe stream
        with one replica per node, created and deleted, proves the cluster is ready.
        """
        await self.wait_for_jetstream(timeout)
        deadline = time.monotonic() + timeout
        probe = f"PROBE_{uuid.uuid4().hex[:8]}"
        config = api.StreamConfig(
            name=probe,
            subjects=[f"probe.{probe}"],
            num_replicas=self.size,
            storage=api.StorageType.MEMORY,
        )
        nc = await nats.connect(
            self.urls[0],
            connect_timeout=5,
            allow_reconnect=False,
            user_credentials=self.admin_creds,
        )
        try:
            js = nc.jetstream(timeout=2.0)
            while True:
                try:
                    await js.add_stream(config)
                    await js.delete_stream(probe)
                    return
                except (NatsError, TimeoutError) as e:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"cluster could not place R{self.size}: {e}") from e
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()
