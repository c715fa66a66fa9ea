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


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


async def test_each_supervised_instance_runs_as_itself_and_a_fleet_kill_revokes_them(
    admin: Bus, local: ShoalSettings, tmp_path: Path
) -> None:
    store = KeyStore.for_data_dir(local.data_dir)
    url = resolve_url(local, start=False)
    env = {
        **process_env(local),
        "NATS_URL": url,  # as `shoal up` starts it: an explicit URL and its own creds
        "NATS_CREDS": str(store.creds_path("supervisor")),
    }
    with (tmp_path / "sup.log").open("ab") as log:
        sup = subprocess.Popen(
            [sys.executable, "-m", "shoal", "supervisor", "--id", "sup-sec"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    stop = asyncio.Event()
    warden = asyncio.create_task(run_warden(local, stop))
    app = open_fleet_app(local)
    try:
        await apply_fleet(admin, app, parse_fleet_spec(SPEC), by="tester")
        try:
            procs = await eventually(
                lambda: procs_now(local.prefix), lambda ps: len(ps) == 2, 60, "2 instances"
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{(tmp_path / 'sup.log').read_text()[-3000:]}") from e
        for p in procs:
            creds = Path(environ(p.pid)["NATS_CREDS"])
            assert creds == store.home / "instances" / f"sec.worker.{p.instance}.creds"
            assert oct(creds.stat().st_mode & 0o777) == "0o600"
            claims = decode_claims(parse_creds(creds.read_text())[0])
            assert claims["name"] == f"sec.worker.{p.instance}"
            assert (
                f"{local.prefix}.events.*.*.model.called.agent.sec.worker.{p.instance}"
                in (claims["nats"]["pub"]["allow"])
            )
            assert p.instance not in " ".join(
                os.popen(f"ps -o args= -p {p.pid}").read().split()[0:1]
            )
        await kill(admin, "fleet", "sec", by="tester", reason="test")
        await eventually(lambda: procs_now(local.prefix), lambda ps: ps == [], 60, "0 instances")
        revoked = store.revocations()
        publics = [
            decode_claims(
                parse_creds(
                    (store.home / "instances" / f"sec.worker.{p.instance}.creds").read_text()
                )[0]
            )["sub"]
            for p in procs
        ]
        assert all(k in revoked for k in publics)
    finally:
        app.close()
        stop.set()
        await asyncio.wait_for(warden, 10)
        sup.terminate()
        sup.wait(20)
        for p in agent_procs(local.prefix):
            os.kill(p.pid, 9)
