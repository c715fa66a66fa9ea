"""The platform's long-running local processes, run detached by ``shoal up``.

Four services: the core (``shoal core``: ingestion, budgets, watchdog), the query service
(``shoal projections serve``: owns the DuckDB projection and answers over NATS), the gateway
(``shoal gateway``: model and MCP gateways), a supervisor (``shoal supervisor``: runs the
instances of applied fleets), and the web console (``shoal console``, reading over NATS
only). Each runs in its own
session, so it outlives the ``shoal up`` that started it, logs to
``<data_dir>/services/<name>.log`` and is found again through ``<name>.json`` (pid, its
kernel start time, URL). A recorded pid counts only while the process with that pid has that
start time, so a recycled pid is never signalled (the command line would not do: between
fork and exec a child still shows its parent's).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shoal.auth import local_creds
from shoal.bus import ShoalSettings
from shoal.bus.connectopts import redact_url
from shoal.ops.instances import instance_env
from shoal.ops.server import pid_alive

__all__ = [
    "CONSOLE",
    "CORE",
    "GATEWAY",
    "LOCAL_SERVICES",
    "QUERY",
    "SUPERVISOR",
    "WARDEN",
    "LocalService",
    "gateway_urls",
    "write_gateway_urls",
]


@dataclass(frozen=True)
class LocalService:
    """One detached ``python -m shoal <args>`` process per data dir."""

    name: str
    args: tuple[str, ...]

    def home(self, settings: ShoalSettings) -> Path:
        return settings.data_dir.resolve() / "services"

    def record_path(self, settings: ShoalSettings) -> Path:
        return self.home(settings) / f"{self.name}.json"

    def log_path(self, settings: ShoalSettings) -> Path:
        return self.home(settings) / f"{self.name}.log"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "shoal", *self.args]

    def pid(self, settings: ShoalSettings) -> int | None:
        """The pid of the running service, or None."""
        try:
            record = json.loads(self.record_path(settings).read_text())
            pid, started = int(record["pid"]), record.get("started")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return pid if pid_alive(pid) and _start_time(pid) == started else None

    def start(self, settings: ShoalSettings, url: str) -> tuple[int, bool]:
        """Start it detached unless it runs; return (pid, started)."""
        pid = self.pid(settings)
        if pid is not None:
            return pid, False
        self.home(settings).mkdir(mode=0o700, parents=True, exist_ok=True)
        env = instance_env(settings, url)
        creds = local_creds(settings, self.name) if settings.embedded else None
        if creds is not None:  # its own user, by file path (never the secret itself)
            env["NATS_CREDS"] = str(creds)
        log_fd = os.open(self.log_path(settings), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            proc = subprocess.Popen(
                self.argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record = {"pid": proc.pid, "started": _start_time(proc.pid), "url": redact_url(url)}
        fd = os.open(self.record_path(settings), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record))
        return proc.pid, True

    def stop(self, settings: ShoalSettings, timeout: float = 15.0) -> int | None:
        """SIGTERM (the service drains), SIGKILL after ``timeout``; None if none ran."""
        pid = self.pid(settings)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.record_path(settings).unlink()
        return pid


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None where /proc is absent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at field 3; starttime is 22.
    return int(stat.rsplit(")", 1)[1].split()[19])


CORE = LocalService("core", ("core",))
QUERY = LocalService("query", ("projections", "serve"))
SUPERVISOR = LocalService("supervisor", ("supervisor",))
GATEWAY = LocalService("gateway", ("gateway",))
CONSOLE = LocalService("console", ("console",))
WARDEN = LocalService("warden", ("auth", "warden"))
"""Revokes killed instances' credentials; runs where the key store lives (embedded)."""
LOCAL_SERVICES = (CORE, QUERY, GATEWAY, SUPERVISOR, WARDEN, CONSOLE)
"""In start order; ``shoal down`` stops them in reverse."""


def _urls_path(settings: ShoalSettings) -> Path:
    return GATEWAY.home(settings) / "gateway-urls.json"


def write_gateway_urls(settings: ShoalSettings, url: str, mcp_url: str | None) -> None:
    """Where a running gateway listens (read by ``shoal status`` and the supervisor)."""
    path = _urls_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "mcp_url": mcp_url}))


def gateway_urls(settings: ShoalSettings) -> dict[str, str | None] | None:
    """The local gateway's URLs while it runs (``SHOAL_GATEWAY_URL`` wins), else None."""
    if settings.gateway_url:
        return {"url": settings.gateway_url, "mcp_url": None}
    if GATEWAY.pid(settings) is None:
        return None
    try:
        doc = json.loads(_urls_path(settings).read_text())
        return {"url": str(doc["url"]), "mcp_url": doc.get("mcp_url")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
