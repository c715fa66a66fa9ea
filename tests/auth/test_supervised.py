"""Supervised instances get their own credentials at launch; a fleet kill revokes them all."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.auth import KeyStore, decode_claims, parse_creds
from shoal.bus import Bus, ShoalSettings
from shoal.ops.auth import run_warden
from shoal.ops.connect import open_bus, resolve_url
from shoal.ops.fleets import apply_fleet, open_fleet_app
from shoal.ops.kill import kill
from shoal.schemas.fleet import parse_fleet_spec
from tests.ops.fleetprocs import agent_procs, eventually, process_env, procs_now

pytestmark = pytest.mark.timeout(120)

SPEC = """
fleet: sec
agents:
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    version: "1"
    replicas: 2
"""


@pytest.fixture
async def admin(local: ShoalSettings) -> AsyncIterator[Bus]:
    async with open_bus(local) as bus:
        yield bus


def start_supervisor(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal", "supervisor", "--id", "sup-sec"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def launched_as(pid: int, instance: str, store: KeyStore, prefix: str) -> str:
    """Check one instance process runs with its own creds; return its user key."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(e.decode().split("=", 1) for e in raw if b"=" in e)
    creds = Path(env["NATS_CREDS"])
    assert creds == store.home / "instances" / f"sec.worker.{instance}.creds"
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    claims = decode_claims(parse_creds(creds.read_text())[0])
    assert claims["name"] == f"sec.worker.{instance}"
    own = f"{prefix}.events.*.*.model.called.agent.sec.worker.{instance}"
    assert own in claims["nats"]["pub"]["allow"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert "SU" not in argv and str(creds) not in argv  # no secret, no path on argv
    return str(claims["sub"])


def stop(proc: subprocess.Popen[bytes], prefix: str) -> None:
    proc.terminate()
    proc.wait(20)
    for p in agent_procs(prefix):
        os.kill(p.pid, 9)


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


async def test_each_supervised_instance_runs_as_itself_and_a_fleet_kill_revokes_them(
    admin: Bus, local: ShoalSettings, tmp_path: Path
) -> None:
    store = KeyStore.for_data_dir(local.data_dir)
    env = {
        **process_env(local),
        "NATS_URL": resolve_url(local, start=False),  # as `shoal up` starts it: a URL and
        "NATS_CREDS": str(store.creds_path("supervisor")),  # the supervisor's own creds
    }
    sup = start_supervisor(env, tmp_path / "sup.log")
    halt = asyncio.Event()
    warden = asyncio.create_task(run_warden(local, halt))
    app = open_fleet_app(local)
    try:
        await apply_fleet(admin, app, parse_fleet_spec(SPEC), by="tester")
        try:
            procs = await eventually(
                lambda: procs_now(local.prefix), lambda ps: len(ps) == 2, 60, "2 instances"
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{log_tail(tmp_path / 'sup.log')}") from e
        users = [launched_as(p.pid, p.instance, store, local.prefix) for p in procs]
        await kill(admin, "fleet", "sec", by="tester", reason="test")
        await eventually(lambda: procs_now(local.prefix), lambda ps: ps == [], 60, "0 instances")
        for _ in range(100):  # the warden revokes within milliseconds of the kill
            if set(users) <= store.revocations().keys():
                break
            await asyncio.sleep(0.05)
        assert set(users) <= store.revocations().keys()
    finally:
        app.close()
        halt.set()
        await asyncio.wait_for(warden, 10)
        stop(sup, local.prefix)


def start_cli_agent(local: ShoalSettings, log_path: Path) -> subprocess.Popen[bytes]:
    code = "from shoal.ops.cli import main; main()"
    env = {**os.environ, "SHOAL_DATA_DIR": str(local.data_dir), "SHOAL_PREFIX": local.prefix}
    env.pop("NATS_URL", None)
    env.pop("NATS_CREDS", None)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, "agent", "run", "demo", "summarizer", "--instance", "A1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_agent_run_by_the_local_admin_connects_as_its_instance(
    admin: Bus, local: ShoalSettings, tmp_path: Path
) -> None:
    proc = start_cli_agent(local, tmp_path / "agent.log")
    try:
        subject = admin.subjects.events_filter(iid="A1", short_type="agent.started")

        async def started() -> list[str]:
            return [s.subject for s in await admin.read(subject)]

        try:
            subjects = await eventually(started, lambda s: len(s) == 1, 60, "agent.started")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{log_tail(tmp_path / 'agent.log')}") from e
        assert subjects == [f"{local.prefix}.events._.A1.agent.started.agent.demo.summarizer.A1"]
        store = KeyStore.for_data_dir(local.data_dir)
        assert (store.home / "instances" / "demo.summarizer.A1.creds").is_file()
    finally:
        stop(proc, local.prefix)
