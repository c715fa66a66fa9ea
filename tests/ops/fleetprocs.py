"""Real supervisor and agent processes for fleet tests, counted from ``/proc``.

An instance belongs to a test when its command line is ``… shoal agent run …`` and its
environment carries the test's ``SHOAL_PREFIX``: the count is of OS processes, not of
anything shoal reports about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from shoal.bus import ShoalSettings
from tests.natsproc import NatsProcess

T = TypeVar("T")


@dataclass(frozen=True)
class AgentProc:
    pid: int
    instance: str
    supervisor: str
    slot: int
    version: str


def _arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else ""


def live_procs(prefix: str) -> Iterator[tuple[int, list[str], dict[str, str]]]:
    """``(pid, argv, environment)`` of live processes whose ``SHOAL_PREFIX`` is ``prefix``
    (zombies excluded)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if f"SHOAL_PREFIX={prefix}".encode() not in environ:
                continue
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" not in status:
            env = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
            yield int(entry.name), argv, env


def agent_procs(prefix: str) -> list[AgentProc]:
    """Live ``shoal agent run`` processes of this test's prefix (zombies excluded)."""
    out = [
        AgentProc(
            pid=pid,
            instance=_arg(argv, "--instance"),
            supervisor=_arg(argv, "--supervisor"),
            slot=int(_arg(argv, "--slot") or -1),
            version=_arg(argv, "--version"),
        )
        for pid, argv, _ in live_procs(prefix)
        if "agent" in argv and "run" in argv and "shoal" in argv
    ]
    return sorted(out, key=lambda p: p.slot)


def fleet_settings(
    nats_server: NatsProcess, prefix: str, tmp_path: Path, lease_ttl_s: float = 3.0
) -> ShoalSettings:
    """Short leases and heartbeats, so take-over and liveness happen within a test's time."""
    return ShoalSettings(
        nats_url=nats_server.url,
        prefix=prefix,
        data_dir=tmp_path / "data",
        principal="tester",
        lease_ttl_s=lease_ttl_s,
        presence_ttl_s=3.0,
    )


def process_env(settings: ShoalSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "NATS_URL": settings.nats_url or "",
            "SHOAL_PREFIX": settings.prefix,
            "SHOAL_DATA_DIR": str(settings.data_dir),
            "SHOAL_LEASE_TTL_S": str(settings.lease_ttl_s),
            "SHOAL_PRESENCE_TTL_S": str(settings.presence_ttl_s),
            "SHOAL_PRINCIPAL": settings.principal,
        }
    )
    return env


class Supervisors:
    """Starts ``python -m shoal supervisor`` processes; stops them and their instances."""

    def __init__(
        self, settings: ShoalSettings, log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.env = env or {}  # added to every supervisor's environment
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, sup_id: str, *args: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{sup_id}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shoal", "supervisor", "--id", sup_id, *args],
                env={**process_env(self.settings), **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def log(self, sup_id: str) -> str:
        return (self.log_dir / f"{sup_id}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for p in agent_procs(self.settings.prefix):  # never leave an instance behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Poll ``probe`` until ``check`` holds; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f}s; last: {value!r}")
        await asyncio.sleep(interval)


async def procs_now(prefix: str) -> list[AgentProc]:
    return agent_procs(prefix)
