"""The plain nats-py worker, with its own enrolled credentials, serves an orchestrator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.bus import ShoalSettings
from shoal.ops.cli import app
from shoal.ops.connect import open_bus, resolve_url
from tests.agents.conftest import of_type, shout_goal

pytestmark = pytest.mark.timeout(60)

WORKER = Path(__file__).parent.parent / "agents" / "plain_worker.py"


async def test_the_plain_worker_with_enrolled_credentials_completes_a_goal(
    local: ShoalSettings, tmp_path: Path
) -> None:
    creds = tmp_path / "worker.creds"
    env = {"SHOAL_DATA_DIR": str(local.data_dir), "SHOAL_PREFIX": local.prefix, "NATS_URL": ""}
    args = [
        "auth",
        "enroll",
        "wire",
        "plain-worker",
        "--capability",
        "shout",
        "--instance",
        "W1",
        "--out",
        str(creds),
        "--json",
    ]
    enrolled = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    assert enrolled.exit_code == 0, enrolled.output
    assert (json.loads(enrolled.stdout)["name"], oct(creds.stat().st_mode & 0o777)) == (
        "wire.plain-worker.W1",
        "0o600",
    )
    async with open_bus(local) as bus:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            resolve_url(local, start=False),
            local.prefix,
            "wire",
            "shout",
            "2",
            env={**os.environ, "NATS_CREDS": str(creds), "SHOAL_INSTANCE": "W1"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, events = await shout_goal(bus, ["a", "b"])
        out, err = await asyncio.wait_for(worker.communicate(), 30)
    assert worker.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1])["handled"] == 2
    done = of_type(events, "goal.completed")
    assert len(done) == 1
    completed = of_type(events, "task.completed")
    assert sorted(
        (e.agent, e.instance, e.data.model_dump()["output"]["text"]) for e in completed
    ) == [
        ("plain-worker", "W1", "A"),
        ("plain-worker", "W1", "B"),
    ]
