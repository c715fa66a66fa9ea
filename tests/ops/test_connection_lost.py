"""Every long-running shoal process exits non-zero once its connection is gone for good.

The processes connect as a user the test then removes from the server's config (a reload):
the server drops their connections and refuses them from then on. nats-py would retry that
forever; each process must instead end with one clear line and exit 1, so that whatever
supervises it (systemd, compose, ``shoal supervisor``) can start it afresh.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.bus import Bus, ShoalSettings
from shoal.errors import RUNTIME_EXIT
from tests.natsproc import NatsProcess, auth_config

pytestmark = pytest.mark.timeout(120)

LOST = (
    "error: the NATS connection was closed and will not reconnect (nats: 'Authorization Violation')"
)

COMMANDS = {
    "core": (["core"], "core ingesting"),
    "supervisor": (["supervisor"], "reconciling via"),
    "query": (["projections", "serve"], "query service on"),
    "agent": (["agent", "run", "demo", "summarizer"], None),  # ready: its agent.started
}


async def test_core_agent_supervisor_and_query_service_exit_1_when_their_connection_is_gone(
    nats_process: Callable[..., NatsProcess], tmp_path: Path, settings: ShoalSettings
) -> None:
    config = auth_config(tmp_path / "auth.conf", "operator", "shoal")
    server = nats_process("-c", str(config))
    operator = settings.model_copy(
        update={"nats_url": server.url.replace("nats://", "nats://operator:operator-pw@")}
    )
    url = server.url.replace("nats://", "nats://shoal:shoal-pw@")
    common = ["--nats-url", url, "--prefix", settings.prefix, "--data-dir", str(settings.data_dir)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}

    def stderr(name: str) -> str:
        return logs[name].read_text(errors="replace")

    async with Bus.connect(operator.nats_url or "", operator) as bus:
        await bus.provision()
        try:
            for name, (args, ready) in COMMANDS.items():
                logs[name] = tmp_path / f"{name}.err"
                with logs[name].open("wb") as err:
                    procs[name] = subprocess.Popen(  # noqa: ASYNC220 - started once, then polled
                        [sys.executable, "-m", "shoal", *common, *args],
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                deadline = time.monotonic() + 30
                while not await _ready(bus, ready, stderr(name)):
                    assert procs[name].poll() is None, f"{name} exited early: {stderr(name)}"
                    assert time.monotonic() < deadline, f"{name} not ready: {stderr(name)}"
                    await asyncio.sleep(0.1)

            auth_config(config, "operator")  # the processes' user is removed…
            assert server.proc is not None
            server.proc.send_signal(signal.SIGHUP)  # …and the server drops its connections

            deadline = time.monotonic() + 45
            alive = [p for p in procs.values() if p.poll() is None]
            while alive and time.monotonic() < deadline:  # polling child exit: no event to wait on
                await asyncio.sleep(0.1)
                alive = [p for p in alive if p.poll() is None]
            codes = {name: p.poll() for name, p in procs.items()}
            assert codes == dict.fromkeys(COMMANDS, RUNTIME_EXIT), {
                n: stderr(n)[-600:] for n in procs
            }
            for name in procs:  # it ends with one clear line (the core may log before it)
                lines = stderr(name).splitlines()
                assert LOST in lines, stderr(name)
                assert not [ln for ln in lines[lines.index(LOST) :] if "Traceback" in ln]
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(10)


async def _ready(bus: Bus, marker: str | None, stderr: str) -> bool:
    if marker is not None:
        return marker in stderr
    started = await bus.read(bus.subjects.events_filter(short_type="agent.started"))
    return bool(started)
