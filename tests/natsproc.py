"""A real nats-server process for tests: free port, temporary store, kill and restart."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal.ops.server import find_nats_server, free_port, nats_url, port_open


@dataclass
class NatsProcess:
    """One nats-server with JetStream; ``restart`` keeps its port and store (fault tests)."""

    store_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return nats_url(self.port)

    def start(self, timeout: float = 10.0) -> NatsProcess:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = (self.store_dir.parent / f"nats-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(find_nats_server()),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.store_dir),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> NatsProcess:
        self.kill()
        return self.start()


def auth_config(path: Path, *users: str) -> Path:
    """Write a server config letting in ``users`` (password ``<user>-pw``); rewrite + SIGHUP
    to revoke one: the server drops its connections and refuses it from then on."""
    entries = ", ".join(f"{{user: {u}, password: {u}-pw}}" for u in users)
    path.write_text(f"authorization {{ users = [ {entries} ] }}\n")
    return path
