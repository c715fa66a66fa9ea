"""What a supervisor makes of a fleet spec, against real processes: the spec's manifest is the
one its instances' gateways enforce; it runs no more instances than its capacity and says
why the rest wait; a newer desired state preempts a large scale-up in progress."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus, ShoalSettings
from shoal.ops.capacity import INSTANCES_PER_CPU, cpu_count, host_capacity
from shoal.ops.cli import app as cli_app
from shoal.ops.fleets import AgentView, apply_fleet, describe_fleet, fleet_command, open_fleet_app
from shoal.ops.instances import Launch
from shoal.ops.supervisor import Supervisor, SupervisorOptions
from shoal.schemas.fleet import parse_fleet_spec
from tests.natsproc import NatsProcess
from tests.ops.fleetprocs import Supervisors, agent_procs, eventually, process_env, procs_now
from tests.ops.test_kill import PROBE, probe

pytestmark = pytest.mark.timeout(150)

WORKER = "shoal.agents.demo:summarizer_agent"


@pytest.fixture
def settings(nats_server: NatsProcess, prefix: str, tmp_path: Path) -> ShoalSettings:
    # Short leases and heartbeats, so take-over and liveness happen within a test's time.
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


def probe_with_tools(tools: str) -> str:
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
    await apply_fleet(bus, app, parse_fleet_spec(probe_with_tools("{list_files: {}}")), by="tester")
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
    await apply_fleet(bus, app, parse_fleet_spec(probe_with_tools(tools)), by="tester")
    [second] = await eventually(
        lambda: procs_now(prefix),
        lambda ps: len(ps) == 1 and ps[0].instance != first.instance,
        45,
        "replaced",
    )
    assert await probe(bus, "alpha", "read_file") == (second.instance, "ok")


def two_agents(a: int, b: int) -> str:
    return f"""
fleet: demo
agents:
  - {{name: a, target: "{WORKER}", replicas: {a}}}
  - {{name: b, target: "{WORKER}", replicas: {b}}}
"""


def held(view: AgentView) -> list[int]:
    return [s.slot for s in view.slots]


async def test_a_supervisor_admits_only_its_capacity_and_describe_says_why_the_rest_wait(
    bus: Bus, app: FleetApplication, supervisors: Supervisors, settings: ShoalSettings, prefix: str
) -> None:
    await apply_fleet(bus, app, parse_fleet_spec(two_agents(4, 4)), by="tester")
    supervisors.start("sup-a", "--capacity", "3")
    await eventually(lambda: procs_now(prefix), lambda ps: len(ps) == 3, 45, "3 instances")

    async def agents() -> tuple[AgentView, AgentView]:
        view = await describe_fleet(bus, "demo")
        a, b = view.agents
        return a, b

    a, b = await eventually(agents, lambda ab: ab[0].actual + ab[1].actual == 3, 30, "present")
    # Slot 0 of every agent before any agent's slot 1: both agents run.
    assert (held(a), held(b)) == ([0, 1], [0])
    assert (a.pending, b.pending) == ([2, 3], [1, 2, 3])
    reason = "every supervisor is at capacity: sup-a 3/3 (--capacity 3)"
    assert (a.pending_reason, b.pending_reason) == (reason, reason)
    await asyncio.sleep(2.0)  # several passes later: still three, never more
    assert len(agent_procs(prefix)) == 3
    text = await asyncio.to_thread(
        CliRunner().invoke, cli_app, ["fleet", "describe", "demo"], env=process_env(settings)
    )
    printed = " ".join(text.output.split())  # as `fleet describe` prints it, unwrapped
    assert f"2 slot(s) pending (2-3): {reason}" in printed
    assert f"3 slot(s) pending (1-3): {reason}" in printed

    await fleet_command(bus, app, "demo", "scale", by="tester", replicas={"a": 1, "b": 1})
    await eventually(lambda: procs_now(prefix), lambda ps: len(ps) == 2, 30, "2 instances")
    a, b = await eventually(
        agents, lambda ab: (held(ab[0]), held(ab[1])) == ([0], [0]), 30, "slots released"
    )
    assert (a.pending, b.pending) == ([], [])


def sleeper(launch: Launch) -> list[str]:
    """An instance that costs almost nothing to start: it sleeps (and never heartbeats)."""
    code = "import time; time.sleep(300)"
    return [sys.executable, "-c", code, "shoal", "agent", "run", launch.fleet, launch.agent,
            "--instance", launch.instance, "--slot", str(launch.slot),
            "--supervisor", launch.supervisor, "--version", launch.version]  # fmt: skip


async def test_a_scale_down_preempts_a_scale_up_in_progress(
    bus: Bus, app: FleetApplication, settings: ShoalSettings, prefix: str
) -> None:
    spec = f"fleet: demo\nagents:\n  - {{name: worker, target: '{WORKER}', replicas: 200}}\n"
    options = SupervisorOptions(capacity=200, drain_grace_s=2.0, kill_grace_s=1.0)
    sup = Supervisor(bus, settings.nats_url or "", supervisor_id="sup-p", options=options,
                     launcher=sleeper)  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(sup.run(stop))
    try:
        await apply_fleet(bus, app, parse_fleet_spec(spec), by="tester")

        async def launched() -> int:
            return sup.launcher.launched

        await eventually(launched, lambda n: n >= 3, 60, "scale-up under way", interval=0.005)
        await fleet_command(bus, app, "demo", "scale", by="tester", replicas={"worker": 3})
        await eventually(lambda: procs_now(prefix), lambda ps: len(ps) == 3, 60, "3 left")

        async def slots() -> list[int]:
            return held((await describe_fleet(bus, "demo")).agents[0])

        assert await eventually(slots, lambda s: s == [0, 1, 2], 30, "3 leases") == [0, 1, 2]
        assert sorted(s.index for s in sup.leases.held.values()) == [0, 1, 2]
        # The scale-up of 200 was cut short: it never started them all.
        assert sup.launcher.launched < 200
        assert sorted(p.slot for p in agent_procs(prefix)) == [0, 1, 2]
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        for p in agent_procs(prefix):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)


def test_capacity_is_computed_from_cpus_and_memory_unless_overridden() -> None:
    computed = host_capacity()
    assert 1 <= computed.instances <= cpu_count() * INSTANCES_PER_CPU
    assert f"{cpu_count()} CPU(s) x {INSTANCES_PER_CPU}" in computed.source
    override = host_capacity(7, "SHOAL_SUPERVISOR_CAPACITY")
    assert (override.instances, override.source) == (7, "SHOAL_SUPERVISOR_CAPACITY 7")
