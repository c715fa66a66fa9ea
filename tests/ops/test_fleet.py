"""Fleet commands: aggregate first, then desired state in KV, then the audit trail — through
the library and through the ``shoal fleet`` CLI, against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus, ShoalSettings
from shoal.errors import NotFound, Refused
from shoal.ops.cli import app as cli_app
from shoal.ops.fleets import (
    apply_fleet,
    describe_fleet,
    fleet_command,
    open_fleet_app,
    write_desired,
)
from shoal.ops.server import pid_alive
from shoal.ops.services import SUPERVISOR
from shoal.schemas.fleet import FleetDesired, parse_fleet_spec
from tests.ops.fleetprocs import process_env

SPEC = """
fleet: demo
agents:
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    replicas: 2
"""


@pytest.fixture
async def app(settings: ShoalSettings) -> AsyncIterator[FleetApplication]:
    application = open_fleet_app(settings)
    yield application
    application.close()


async def desired_in_kv(bus: Bus, fleet: str) -> tuple[FleetDesired, int]:
    entry = await (await bus.kv(bus.topology.fleets.name)).get(fleet)
    return FleetDesired.model_validate_json(entry.value or b""), entry.revision or 0


async def audit(bus: Bus) -> list[tuple[str, str, dict[str, object]]]:
    stored = await bus.read(bus.subjects.all_control, stream=bus.topology.control.name)
    return [(s.subject, s.event.type, s.event.data.model_dump()) for s in stored if s.event]


async def test_apply_writes_the_aggregates_desired_state_and_audits_it(
    bus: Bus, app: FleetApplication
) -> None:
    written = await apply_fleet(bus, app, parse_fleet_spec(SPEC), by="alice", reason="launch")
    in_kv, _ = await desired_in_kv(bus, "demo")
    assert in_kv == written == app.get_fleet("demo").desired()
    assert (in_kv.running, in_kv.generation, in_kv.replicas("worker")) == (True, 1, 2)
    [(subject, type_, data)] = await audit(bus)
    assert subject == bus.subjects.control("fleet", "apply")
    assert type_ == "shoal.control.accepted"
    assert (data["command"], data["target"], data["by"], data["reason"]) == (
        "fleet.apply",
        "demo",
        "alice",
        "launch",
    )


async def test_refused_command_is_audited_and_leaves_desired_state_alone(
    bus: Bus, app: FleetApplication
) -> None:
    await apply_fleet(bus, app, parse_fleet_spec(SPEC), by="alice")
    await fleet_command(bus, app, "demo", "stop", by="bob", reason="incident")
    before, revision = await desired_in_kv(bus, "demo")
    with pytest.raises(Refused, match="fleet demo is stopped: start it before scaling"):
        await fleet_command(bus, app, "demo", "scale", by="bob", replicas={"worker": 4})
    after, revision_after = await desired_in_kv(bus, "demo")
    assert (after, revision_after) == (before, revision)
    with pytest.raises(NotFound):
        await fleet_command(bus, app, "nope", "start", by="bob")
    trail = [(s.rsplit(".", 2)[-1], t.rsplit(".", 1)[-1], d["by"]) for s, t, d in await audit(bus)]
    assert trail == [
        ("apply", "accepted", "alice"),
        ("stop", "accepted", "bob"),
        ("scale", "refused", "bob"),
        ("start", "refused", "bob"),
    ]
    refused = (await audit(bus))[2][2]
    assert refused["reason"] == "fleet demo is stopped: start it before scaling"


async def test_describe_of_an_unknown_fleet_is_not_found(bus: Bus) -> None:
    with pytest.raises(NotFound, match="no fleet named 'ghost'"):
        await describe_fleet(bus, "ghost")


def test_fleet_cli_applies_scales_describes_and_lists_history(
    settings: ShoalSettings, tmp_path: Path
) -> None:
    runner = CliRunner()
    env = process_env(settings)
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(SPEC)

    applied = runner.invoke(cli_app, ["fleet", "apply", str(spec_file), "-r", "launch"], env=env)
    assert applied.exit_code == 0, applied.output
    assert "fleet demo applied: running, worker=2@1" in applied.output
    scaled = runner.invoke(
        cli_app, ["fleet", "scale", "demo", "worker=5", "--reason", "peak"], env=env
    )
    assert scaled.exit_code == 0, scaled.output
    bad = runner.invoke(cli_app, ["fleet", "scale", "demo", "worker"], env=env)
    assert bad.exit_code == 2
    assert "'worker' is not AGENT=N" in bad.output
    upgraded = runner.invoke(
        cli_app, ["fleet", "upgrade", "demo", "worker", "2", "--no-wait"], env=env
    )
    assert upgraded.exit_code == 0, upgraded.output

    described = runner.invoke(cli_app, ["fleet", "describe", "demo", "--json"], env=env)
    view = json.loads(described.output)
    [worker] = view["agents"]
    assert (view["running"], worker["desired"], worker["actual"]) == (True, 5, 0)
    assert (worker["version"], worker["previous_version"]) == ("2", "1")

    listed = json.loads(runner.invoke(cli_app, ["--json", "fleet", "ls"], env=env).output)
    assert [(f["fleet"], f["generation"]) for f in listed] == [("demo", 3)]

    history = json.loads(
        runner.invoke(cli_app, ["fleet", "history", "demo", "--json"], env=env).output
    )
    assert [(h["command"], h["by"], h["reason"]) for h in history] == [
        ("apply", "tester", "launch"),
        ("scale", "tester", "peak"),
        ("upgrade", "tester", ""),
    ]
    assert all(h["at"] for h in history)
    table = runner.invoke(cli_app, ["fleet", "history", "demo"], env=env)
    assert "worker=5" in table.output and "worker → 2" in table.output


def test_invalid_spec_is_refused_naming_the_field(settings: ShoalSettings, tmp_path: Path) -> None:
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(SPEC.replace("replicas: 2", "replicas: many"))
    result = CliRunner().invoke(
        cli_app, ["fleet", "apply", str(spec_file)], env=process_env(settings)
    )
    assert result.exit_code == 2
    assert "agents.0.replicas: Input should be a valid integer" in result.output
    assert "Traceback" not in result.output


def test_local_supervisor_runs_detached_once_and_stops(settings: ShoalSettings) -> None:
    assert SUPERVISOR.pid(settings) is None
    pid, started = SUPERVISOR.start(settings, settings.nats_url or "")
    try:
        assert started and pid_alive(pid)
        assert SUPERVISOR.start(settings, settings.nats_url or "") == (pid, False)  # reused
        assert SUPERVISOR.pid(settings) == pid
    finally:
        stopped = SUPERVISOR.stop(settings)
    assert stopped == pid
    assert not pid_alive(pid)
    assert SUPERVISOR.pid(settings) is None
    assert SUPERVISOR.stop(settings) is None


def test_demo_fleet_example_is_valid_and_its_targets_load() -> None:
    from shoal.agents.serve import resolve_agent

    spec = parse_fleet_spec(
        (Path(__file__).parents[2] / "examples" / "demo-fleet.yaml").read_text()
    )
    assert [(a.name, a.replicas) for a in spec.agents] == [("orchestrator", 1), ("worker", 2)]
    for a in spec.agents:
        agent = resolve_agent(spec.fleet, a.name, a.target)
        assert (agent.fleet, agent.name) == ("demo", a.name)


async def test_an_older_desired_write_after_a_newer_one_does_not_replace_it(
    bus: Bus, app: FleetApplication
) -> None:
    older = await apply_fleet(bus, app, parse_fleet_spec(SPEC), by="alice")
    newer = await fleet_command(bus, app, "demo", "scale", by="bob", replicas={"worker": 7})
    _, revision = await desired_in_kv(bus, "demo")

    assert await write_desired(bus, older) is False  # delayed past the scale: refused
    in_kv, revision_after = await desired_in_kv(bus, "demo")
    assert (in_kv, revision_after) == (newer, revision)
    assert (in_kv.generation, in_kv.replicas("worker")) == (2, 7)


async def test_desired_writes_racing_in_any_order_leave_the_newest_generation(
    bus: Bus, app: FleetApplication
) -> None:
    docs = [await apply_fleet(bus, app, parse_fleet_spec(SPEC), by="alice")]
    for n in range(1, 12):
        docs.append(
            await fleet_command(bus, app, "demo", "scale", by="bob", replicas={"worker": n})
        )
    kv = await bus.kv(bus.topology.fleets.name)
    await kv.delete("demo")  # start the race from a deleted key: create, then updates
    shuffled = random.Random(11).sample(docs, len(docs))
    written = await asyncio.gather(*(write_desired(bus, d) for d in shuffled))
    in_kv, _ = await desired_in_kv(bus, "demo")
    assert (in_kv.generation, in_kv.replicas("worker")) == (12, 11)
    assert in_kv == docs[-1]
    assert written.count(True) >= 1 and written[shuffled.index(docs[-1])] is True


def test_fleet_scale_beyond_the_limit_is_refused_in_one_line_and_audited(
    settings: ShoalSettings, tmp_path: Path
) -> None:
    runner = CliRunner()
    env = process_env(settings)
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(SPEC)
    assert runner.invoke(cli_app, ["fleet", "apply", str(spec_file)], env=env).exit_code == 0

    huge = runner.invoke(cli_app, ["fleet", "scale", "demo", "worker=100000"], env=env)
    assert huge.exit_code == 2
    assert "cannot scale worker to 100000: replicas must be 0 to 1000" in huge.output
    assert "Traceback" not in huge.output
    view = json.loads(
        runner.invoke(cli_app, ["fleet", "describe", "demo", "--json"], env=env).output
    )
    assert (view["generation"], view["agents"][0]["desired"]) == (1, 2)

    async def refusals() -> list[str]:
        async with Bus.connect(settings.nats_url or "", settings, name="t") as bus:
            return [str(d["reason"]) for _, t, d in await audit(bus) if t.endswith("refused")]

    assert asyncio.run(refusals()) == ["cannot scale worker to 100000: replicas must be 0 to 1000"]
