"""A fleet spec's manifest is the one a supervised instance's gateways enforce: a tool the
spec leaves out is refused, and granting it again replaces the running instance."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus, ShoalSettings
from shoal.ops.fleets import apply_fleet, open_fleet_app
from shoal.schemas.fleet import parse_fleet_spec
from tests.natsproc import NatsProcess
from tests.ops.fleetprocs import Supervisors, eventually, procs_now
from tests.ops.test_kill import PROBE, probe

pytestmark = pytest.mark.timeout(150)


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


def spec(tools: str) -> str:
    return f"""
fleet: alpha
agents:
  - name: probe
    target: {PROBE}
    manifest: {{tools: {tools}}}
"""


async def test_a_tool_the_spec_manifest_removes_is_refused_in_a_supervised_instance(
    bus: Bus, app: FleetApplication, supervisors: Supervisors, settings: ShoalSettings, prefix: str
) -> None:
    (settings.data_dir / "workspace").mkdir(parents=True)
    (settings.data_dir / "workspace" / "a.md").write_text("# a\n")
    # The probe agent's code grants read_file and list_files; the spec keeps list_files only.
    await apply_fleet(bus, app, parse_fleet_spec(spec("{list_files: {}}")), by="tester")
    supervisors.start("sup-a")
    [first] = await eventually(lambda: procs_now(prefix), lambda ps: len(ps) == 1, 45, "1")

    assert await probe(bus, "alpha", "read_file") == (first.instance, "refused:manifest.tool")
    assert await probe(bus, "alpha", "list_files") == (first.instance, "ok")
    denied = [
        s.event
        for s in await bus.read(bus.subjects.events_filter(short_type="policy.decided"))
        if s.event is not None and s.event.data.model_dump()["decision"] == "deny"
    ]
    assert [(e.instance, e.data.model_dump()["rule"]) for e in denied] == [
        (first.instance, "manifest.tool")
    ]

    # Granting it again is a new manifest: the running instance is replaced, and the new one
    # may read.
    tools = "{read_file: {}, list_files: {}}"
    await apply_fleet(bus, app, parse_fleet_spec(spec(tools)), by="tester")
    [second] = await eventually(
        lambda: procs_now(prefix),
        lambda ps: len(ps) == 1 and ps[0].instance != first.instance,
        45,
        "replaced",
    )
    assert await probe(bus, "alpha", "read_file") == (second.instance, "ok")
