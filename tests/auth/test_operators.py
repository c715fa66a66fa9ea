"""Operators: roles from ``shoal auth``, refusals in one line, recorded with the caller."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.bus import ShoalSettings
from shoal.ops.cli import app
from shoal.ops.connect import open_bus
from shoal.schemas import parse_event

pytestmark = pytest.mark.timeout(90)


async def shoal(
    settings: ShoalSettings, *args: str, creds: Path | None = None
) -> tuple[int, str, str]:
    """The CLI in a thread (it runs its own event loop), as a user would run it."""
    env = {
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "SHOAL_PREFIX": settings.prefix,
        "NATS_URL": "",
        "NATS_CREDS": str(creds) if creds else "",
    }
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


async def add(settings: ShoalSettings, name: str, role: str) -> Path:
    code, out, err = await shoal(settings, "auth", "add", name, "--role", role, "--json")
    assert code == 0, err
    return Path(json.loads(out)["path"])


async def test_a_viewer_cannot_kill_and_an_operator_can(local: ShoalSettings) -> None:
    async with open_bus(local):
        pass  # streams and buckets exist, as after 'shoal up'
    viewer, operator = await add(local, "vera", "viewer"), await add(local, "otto", "operator")
    code, out, err = await shoal(local, "kill", "--instance", "i1", creds=viewer)
    assert (code, out) == (2, "")
    assert err.strip() == "error: kill.instance requires role operator; vera has role viewer"
    code, out, err = await shoal(
        local, "kill", "--instance", "i1", "--reason", "r", "--force", creds=operator
    )
    assert code == 0, err
    assert out.splitlines()[0].startswith("kill switch instance.i1 set")
    async with open_bus(local) as bus:
        kv = await bus.kv(bus.topology.kill.name)
        assert json.loads((await kv.get("instance.i1")).value or b"")["by"] == "otto"
        control = await bus.read(bus.subjects.all_control, stream=bus.topology.control.name)
    records = [(s.subject.split(".", 1)[1], parse_event(s.raw)) for s in control]
    assert [(subj, ev.type, ev.data.model_dump()["by"]) for subj, ev in records] == [
        ("control.kill.refused.cli.vera", "shoal.control.refused", "vera"),
        ("control.instance.kill", "shoal.control.accepted", "otto"),
    ]
    assert records[0][1].data.model_dump()["reason"] == (
        "kill.instance requires role operator; vera has role viewer"
    )


async def test_a_viewer_can_query_but_not_call_admin_commands(local: ShoalSettings) -> None:
    async with open_bus(local):
        pass
    viewer = await add(local, "val", "viewer")
    code, out, err = await shoal(local, "status", "--json", creds=viewer)
    assert code == 1, err  # a health check: no local services run in this test
    assert json.loads(out)["embedded"] is True
    code, _, err = await shoal(local, "projections", "rebuild", creds=viewer)
    assert (code, err.strip()) == (
        2,
        "error: projections.rebuild requires role admin; val has role viewer",
    )
    code, _, err = await shoal(local, "fleet", "stop", "demo", creds=viewer)
    assert (code, err.strip()) == (2, "error: fleet requires role operator; val has role viewer")


async def test_revoked_operator_credentials_are_refused(local: ShoalSettings) -> None:
    operator = await add(local, "olga", "operator")
    code, out, err = await shoal(local, "auth", "revoke", "olga")
    assert (code, out.strip()) == (0, f"revoked operator olga (operator): {operator}")
    code, _, err = await shoal(local, "status", creds=operator)
    assert code == 2
    assert "refused the credentials (authorization violation)" in err
    code, out, _ = await shoal(local, "auth", "ls", "--json")
    listed = {c["name"]: c["revoked"] for c in json.loads(out) if c["kind"] == "operator"}
    assert listed["olga"] is True
