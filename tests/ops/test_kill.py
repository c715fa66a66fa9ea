"""Kill switches end to end: the key, the audit, the gateways of real instances, and the
supervisor terminating exactly the killed processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus, KillSwitch, ShoalSettings
from shoal.errors import NotFound
from shoal.ops.cli import app as cli_app
from shoal.ops.fleets import apply_fleet, kv_snapshot, open_fleet_app
from shoal.ops.kill import kill, list_kills, unkill
from shoal.schemas import CloudEvent, TaskAssigned, new_id
from shoal.schemas.fleet import parse_fleet_spec
from tests.natsproc import NatsProcess
from tests.ops.fleetprocs import Supervisors, agent_procs, eventually, process_env, procs_now

pytestmark = pytest.mark.timeout(150)

PROBE = "tests.ops.kill_agents:probe_agent"


@pytest.fixture
def settings(nats_server: NatsProcess, prefix: str, tmp_path: Path) -> ShoalSettings:
    return ShoalSettings(
        nats_url=nats_server.url,
        prefix=prefix,
        data_dir=tmp_path / "data",
        principal="tester",
        lease_ttl_s=3.0,
        presence_ttl_s=3.0,
    )


@pytest.fixture
def supervisors(settings: ShoalSettings, tmp_path: Path) -> Iterator[Supervisors]:
    sups = Supervisors(settings, tmp_path / "logs")
    yield sups
    sups.stop_all()


@pytest.fixture
async def app(settings: ShoalSettings) -> AsyncIterator[FleetApplication]:
    application = open_fleet_app(settings)
    yield application
    application.close()


def probe_spec(fleet: str, replicas: int) -> str:
    return f"""
fleet: {fleet}
agents:
  - name: probe
    target: {PROBE}
    replicas: {replicas}
"""


async def probe(bus: Bus, fleet: str, tool: str) -> tuple[str, str]:
    """Run one probe task on ``fleet``; return (instance that ran it, the gateway's answer)."""
    event = CloudEvent.new(
        TaskAssigned(capability="probe", input={"tool": tool}),
        iid=new_id(),
        principal="tester",
        source="shoal://cli/tester",
    )
    await bus.record(event, bus.subjects.tasks(fleet, "probe"))

    async def completed() -> list[CloudEvent]:
        stored = await bus.session_events(event.iid)
        return [s.event for s in stored if s.event and s.event.short_type == "task.completed"]

    done = await eventually(completed, lambda es: len(es) == 1, 30, f"probe {tool} on {fleet}")
    return done[0].instance or "", str(done[0].data.model_dump()["output"]["result"])


async def test_kill_tool_refuses_it_in_every_instance_of_every_fleet_while_other_tools_work(
    bus: Bus,
    app: FleetApplication,
    supervisors: Supervisors,
    settings: ShoalSettings,
    prefix: str,
) -> None:
    (settings.data_dir / "workspace").mkdir(parents=True)
    (settings.data_dir / "workspace" / "a.md").write_text("# a\n")
    for fleet in ("alpha", "beta"):
        await apply_fleet(bus, app, parse_fleet_spec(probe_spec(fleet, 2)), by="tester")
    supervisors.start("sup-a")
    await eventually(lambda: procs_now(prefix), lambda ps: len(ps) == 4, 45, "4 instances")
    for fleet in ("alpha", "beta"):
        assert (await probe(bus, fleet, "read_file"))[1] == "ok"

    await kill(bus, "tool", "read_file", by="tester", reason="exfiltration suspected")
    answers = [
        (fleet, tool, *await probe(bus, fleet, tool))
        for _ in range(4)
        for fleet in ("alpha", "beta")
        for tool in ("read_file", "list_files")
    ]
    assert sorted({(f, t, result) for f, t, _, result in answers}) == [
        ("alpha", "list_files", "ok"),
        ("alpha", "read_file", "refused:kill.tool"),
        ("beta", "list_files", "ok"),
        ("beta", "read_file", "refused:kill.tool"),
    ]
    assert len(answers) == 16
    refusing = {inst for _, t, inst, _ in answers if t == "read_file"}
    running = {p.instance: p for p in agent_procs(prefix)}
    assert {_fleet_of(running[i].pid) for i in refusing} == {"alpha", "beta"}
    assert len(running) == 4  # a tool kill stops calls, not processes

    await unkill(bus, "tool", "read_file", by="tester")
    assert (await probe(bus, "alpha", "read_file"))[1] == "ok"


async def test_kill_instance_stops_exactly_it_and_fleet_kill_stops_only_that_fleet(
    bus: Bus, app: FleetApplication, supervisors: Supervisors, prefix: str
) -> None:
    for fleet in ("alpha", "beta"):
        await apply_fleet(bus, app, parse_fleet_spec(probe_spec(fleet, 3)), by="tester")
    supervisors.start("sup-a")
    before = await eventually(lambda: procs_now(prefix), lambda ps: len(ps) == 6, 45, "6")
    await eventually(lambda: _present(bus), lambda n: n == 6, 30, "6 heartbeats")
    victim = before[0]

    result = await kill(bus, "instance", victim.instance, by="tester", reason="misbehaving")
    assert result.instances == [victim.instance]
    after = await eventually(lambda: procs_now(prefix), lambda ps: len(ps) == 5, 20, "victim gone")
    assert {p.pid for p in after} == {p.pid for p in before} - {victim.pid}
    await asyncio.sleep(2.0)  # its slot is not refilled while the switch is set
    assert {p.pid for p in agent_procs(prefix)} == {p.pid for p in after}

    alpha = [p for p in after if _fleet_of(p.pid) == "alpha"]
    beta = [p for p in after if _fleet_of(p.pid) == "beta"]
    await kill(bus, "fleet", "alpha", by="tester", reason="runaway")
    left = await eventually(
        lambda: procs_now(prefix),
        lambda ps: {_fleet_of(p.pid) for p in ps} <= {"beta"},
        20,
        "alpha gone",
    )
    assert {p.pid for p in left} == {p.pid for p in beta}
    assert len(alpha) + len(beta) == 5

    # Lifting both switches restores every slot (the killed instance's with a new instance).
    await unkill(bus, "fleet", "alpha", by="tester")
    await unkill(bus, "instance", victim.instance, by="tester")
    restored = await eventually(lambda: procs_now(prefix), lambda ps: len(ps) == 6, 45, "6 again")
    assert victim.instance not in {p.instance for p in restored}
    assert {p.pid for p in beta} <= {p.pid for p in restored}


async def _present(bus: Bus) -> int:
    return len(await kv_snapshot(await bus.kv(bus.topology.presence.name)))


def _fleet_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    try:
        return argv[argv.index("run") + 1]
    except (ValueError, IndexError):
        return ""


async def test_kill_records_the_switch_and_its_audit_events(bus: Bus) -> None:
    iid = new_id()
    result = await kill(bus, "session", iid, by="alice", reason="looping")
    assert result.key == f"session.{iid}"
    assert [(k, s.by, s.reason) for k, s in await list_kills(bus)] == [
        (f"session.{iid}", "alice", "looping")
    ]
    killed = [s.event for s in await bus.session_events(iid) if s.event]
    assert [(e.type, e.data.model_dump()["by"]) for e in killed] == [
        ("shoal.session.killed", "alice")
    ]
    audit = await bus.read(bus.subjects.all_control, stream=bus.topology.control.name)
    assert [s.subject for s in audit] == [bus.subjects.control("session", "kill")]
    assert audit[0].event is not None
    assert audit[0].event.data.model_dump()["reason"] == "looping"

    lifted = await unkill(bus, "session", iid, by="bob")
    assert isinstance(lifted, KillSwitch) and lifted.by == "alice"
    assert await list_kills(bus) == []
    with pytest.raises(NotFound):
        await unkill(bus, "session", iid, by="bob")


def test_kill_cli_needs_exactly_one_scope_and_reports_an_unset_switch(
    settings: ShoalSettings,
) -> None:
    runner = CliRunner()
    env = process_env(settings)
    none = runner.invoke(cli_app, ["kill"], env=env)
    assert none.exit_code == 2
    assert "give exactly one of --instance" in none.output
    two = runner.invoke(cli_app, ["kill", "--tool", "a", "--model", "b"], env=env)
    assert two.exit_code == 2
    unknown = runner.invoke(cli_app, ["kill", "--model", "gpt-x", "--reason", "cost"], env=env)
    assert unknown.exit_code == 1
    assert "unknown model 'gpt-x'" in unknown.output
    ok = runner.invoke(
        cli_app, ["kill", "--model", "gpt-x", "--reason", "cost", "--force"], env=env
    )
    assert ok.exit_code == 0, ok.output
    assert "kill switch model.gpt-x set" in ok.output
    listed = runner.invoke(cli_app, ["--json", "kill", "--list"], env=env)
    assert '"key": "model.gpt-x"' in listed.output
    assert runner.invoke(cli_app, ["unkill", "--model", "gpt-x"], env=env).exit_code == 0
    again = runner.invoke(cli_app, ["unkill", "--model", "gpt-x"], env=env)
    assert again.exit_code == 1
    assert "no kill switch model.gpt-x is set" in again.output
    everything = runner.invoke(cli_app, ["kill", "--all", "-r", "incident"], env=env)
    assert everything.exit_code == 0, everything.output
    assert "kill switch all set" in everything.output
    assert runner.invoke(cli_app, ["unkill", "--all"], env=env).exit_code == 0
