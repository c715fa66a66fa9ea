"""The supervisor against real processes: ``shoal supervisor`` and ``shoal agent run`` children,
counted from ``/proc``, with real SIGKILLs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus, ShoalSettings
from shoal.ops.fleets import (
    FleetView,
    apply_fleet,
    describe_fleet,
    fleet_command,
    open_fleet_app,
)
from shoal.schemas.fleet import parse_fleet_spec
from tests.natsproc import NatsProcess
from tests.ops.fleetprocs import (
    AgentProc,
    Supervisors,
    agent_procs,
    eventually,
    process_env,
    procs_now,
)

pytestmark = pytest.mark.timeout(150)

WORKER = "shoal.agents.demo:summarizer_agent"
LEASE_TTL = 3.0


@pytest.fixture
def settings(nats_server: NatsProcess, prefix: str, tmp_path: Path) -> ShoalSettings:
    # Short leases and heartbeats so take-over and liveness happen within a test's time.
    return ShoalSettings(
        nats_url=nats_server.url,
        prefix=prefix,
        data_dir=tmp_path / "data",
        principal="tester",
        lease_ttl_s=LEASE_TTL,
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


def spec(replicas: int, target: str = WORKER, fleet: str = "demo", batch: int = 2) -> str:
    return f"""
fleet: {fleet}
rollout: {{batch: {batch}, first_heartbeat_s: 60}}
agents:
  - name: worker
    target: {target}
    version: "1"
    replicas: {replicas}
"""


async def converge(bus: Bus, prefix: str, n: int, timeout: float = 45.0) -> list[AgentProc]:
    """Wait until exactly ``n`` instance processes run and ``fleet describe`` shows ``n``."""
    procs = await eventually(
        lambda: procs_now(prefix), lambda ps: len(ps) == n, timeout, f"{n} procs"
    )

    async def view() -> FleetView:
        return await describe_fleet(bus, "demo")

    def shows_n(v: FleetView) -> bool:
        worker = v.agents[0]
        return worker.actual == n and {i.pid for i in worker.instances} == {
            p.pid for p in agent_procs(prefix)
        }

    await eventually(view, shows_n, timeout, f"describe showing {n}")
    return procs


async def shoal(settings: ShoalSettings, *args: str) -> str:
    """Run ``python -m shoal ARGS`` as an operator would; return its stdout (exit 0 asserted)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shoal",
        *args,
        env=process_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def described(settings: ShoalSettings) -> tuple[bool, int, int, list[int]]:
    """``shoal fleet describe demo --json``: running, desired, actual, instance pids."""
    view = json.loads(await shoal(settings, "fleet", "describe", "demo", "--json"))
    worker = view["agents"][0]
    pids = sorted(i["pid"] for i in worker["instances"])
    return view["running"], worker["desired"], worker["actual"], pids


async def test_fleet_scale_stop_start_yield_exact_instance_processes(
    bus: Bus, settings: ShoalSettings, supervisors: Supervisors, prefix: str, tmp_path: Path
) -> None:
    spec_file = tmp_path / "demo.yaml"
    spec_file.write_text(spec(1))
    await shoal(settings, "fleet", "apply", str(spec_file))
    supervisors.start("sup-a")
    await converge(bus, prefix, 1)

    await shoal(settings, "fleet", "scale", "demo", "worker=5", "--reason", "peak")
    five = await converge(bus, prefix, 5)
    assert sorted(p.slot for p in five) == [0, 1, 2, 3, 4]
    assert len({p.instance for p in five}) == 5
    assert await described(settings) == (True, 5, 5, sorted(p.pid for p in five))

    await shoal(settings, "fleet", "scale", "demo", "worker=2")
    two = await converge(bus, prefix, 2)
    # Scale-down drains the highest slots and leaves the others untouched.
    assert [(p.slot, p.pid) for p in two] == [(p.slot, p.pid) for p in five[:2]]
    view = (await describe_fleet(bus, "demo")).agents[0]  # what `fleet describe` prints
    assert (view.desired, view.actual) == (2, 2)
    assert sorted(i.pid for i in view.instances) == sorted(p.pid for p in two)

    await shoal(settings, "fleet", "stop", "demo")
    await converge(bus, prefix, 0)
    assert await described(settings) == (False, 0, 0, [])

    await shoal(settings, "fleet", "start", "demo")
    back = await converge(bus, prefix, 2)
    assert sorted(p.slot for p in back) == [0, 1]


async def test_sigkilled_instance_is_replaced_in_its_slot(
    bus: Bus, app: FleetApplication, supervisors: Supervisors, prefix: str
) -> None:
    await apply_fleet(bus, app, parse_fleet_spec(spec(3)), by="tester")
    supervisors.start("sup-a")
    before = await converge(bus, prefix, 3)
    victim = before[1]
    os.kill(victim.pid, signal.SIGKILL)

    after = await eventually(
        lambda: procs_now(prefix),
        lambda ps: len(ps) == 3 and victim.pid not in {p.pid for p in ps},
        30,
        "replacement",
    )
    assert [p.slot for p in after] == [0, 1, 2]
    assert after[1].instance != victim.instance  # a new instance in the same slot
    assert (after[0].pid, after[2].pid) == (before[0].pid, before[2].pid)
    await converge(bus, prefix, 3)

    async def slot_1() -> tuple[str, int, str]:
        view = await describe_fleet(bus, "demo")
        slot = next(s for s in view.agents[0].slots if s.slot == 1)
        return slot.state, slot.restarts, slot.supervisor

    # The lease reports the restart and, once the new instance heartbeats, "running".
    state = await eventually(slot_1, lambda s: s[0] == "running", 10, "slot 1 running")
    assert state == ("running", 1, "sup-a")


async def test_instance_that_exits_at_start_is_reported_crashlooping_not_restarted(
    bus: Bus, app: FleetApplication, supervisors: Supervisors, prefix: str
) -> None:
    broken = "tests.ops.no_such_module:agent"
    await apply_fleet(bus, app, parse_fleet_spec(spec(1, target=broken)), by="tester")
    supervisors.start("sup-a", "--crashloop-after", "2", "--backoff", "0.2")

    async def slot_state() -> tuple[str, int]:
        slots = (await describe_fleet(bus, "demo")).agents[0].slots
        return (slots[0].state, slots[0].restarts) if slots else ("", 0)

    assert await eventually(slot_state, lambda s: s[0] == "crashloop", 60, "crash loop") == (
        "crashloop",
        2,
    )
    # Given up: no process is started again, and the count stays where it was.
    await asyncio.sleep(2.0)
    assert agent_procs(prefix) == []
    assert await slot_state() == ("crashloop", 2)
    view = await describe_fleet(bus, "demo")
    problem = view.agents[0].problems[0]
    assert "2 exits at start in a row" in problem.message
    assert "no_such_module" in problem.message  # the instance's own last log line
    events = await bus.read(bus.subjects.events_filter(short_type="agent.crashlooping"))
    assert len(events) == 1
    assert events[0].event is not None and events[0].event.agent == "worker"
    assert events[0].event.data.model_dump()["exits"] == 2

    # A new version clears the crash loop: the supervisor tries again (and succeeds).
    await fleet_command(
        bus, app, "demo", "upgrade", by="tester", agent="worker", version="2", target=WORKER
    )
    procs = await converge(bus, prefix, 1)
    assert procs[0].version == "2"


async def test_two_supervisors_share_a_fleet_and_one_takes_over_when_the_other_dies(
    bus: Bus, app: FleetApplication, supervisors: Supervisors, prefix: str
) -> None:
    a = supervisors.start("sup-a")
    supervisors.start("sup-b")
    await eventually(
        lambda: _supervisor_keys(bus), lambda keys: len(keys) == 2, 20, "both supervisors up"
    )
    await apply_fleet(bus, app, parse_fleet_spec(spec(6)), by="tester")
    six = await converge(bus, prefix, 6)
    assert sorted(p.slot for p in six) == [0, 1, 2, 3, 4, 5]
    by_sup = {s: sorted(p.slot for p in six if p.supervisor == s) for s in ("sup-a", "sup-b")}
    assert len(by_sup["sup-a"]) == 3 and len(by_sup["sup-b"]) == 3  # fair share

    a.send_signal(signal.SIGKILL)
    a.wait(5)
    killed_at = time.monotonic()
    # sup-a's instances die with it (parent-death signal): never unsupervised.
    await eventually(
        lambda: procs_now(prefix),
        lambda ps: all(p.supervisor == "sup-b" for p in ps),
        10,
        "sup-a's instances gone",
    )
    taken = await converge(bus, prefix, 6, timeout=LEASE_TTL + 30)
    took = time.monotonic() - killed_at
    assert sorted(p.slot for p in taken) == [0, 1, 2, 3, 4, 5]
    assert {p.supervisor for p in taken} == {"sup-b"}
    assert len(agent_procs(prefix)) == 6  # exactly six, counted again
    assert took < LEASE_TTL + 20, f"take-over took {took:.1f}s"


async def _supervisor_keys(bus: Bus) -> list[str]:
    from shoal.ops.fleets import kv_snapshot

    kv = await bus.kv(bus.topology.leases.name)
    return sorted(await kv_snapshot(kv, "_supervisor.>"))


async def test_rolling_upgrade_replaces_every_instance_and_stops_on_a_failing_version(
    bus: Bus, app: FleetApplication, supervisors: Supervisors, prefix: str
) -> None:
    from shoal.ops.fleets import wait_rollout

    await apply_fleet(bus, app, parse_fleet_spec(spec(2, batch=2)), by="tester")
    supervisors.start("sup-a", "--backoff", "0.2", "--crashloop-after", "2")
    await converge(bus, prefix, 2)

    await fleet_command(bus, app, "demo", "upgrade", by="tester", agent="worker", version="2")
    result = await wait_rollout(bus, "demo", "worker", "2", timeout=60)
    assert result.done, result.message
    procs = await converge(bus, prefix, 2)
    assert [p.version for p in procs] == ["2", "2"]

    # Version 3 cannot start: the rollout stops after the first batch, old instances stay.
    await fleet_command(
        bus,
        app,
        "demo",
        "upgrade",
        by="tester",
        agent="worker",
        version="3",
        target="tests.ops.no_such_module:agent",
    )
    result = await wait_rollout(bus, "demo", "worker", "3", timeout=60)
    assert not result.done
    assert "rollout stopped" in result.message

    async def v3_slots() -> list[str]:
        view = await describe_fleet(bus, "demo")
        return [s.state for s in view.agents[0].slots if s.version == "3"]

    # The canary (one slot, though the batch is 2) fails into a crash loop; the other slot is
    # never replaced.
    states = await eventually(v3_slots, lambda s: s == ["crashloop"], 30, "batch given up")
    assert states == ["crashloop"]
    await asyncio.sleep(1.0)
    remaining = agent_procs(prefix)
    assert len(remaining) == 1 and remaining[0].version == "2"
    assert remaining[0].pid in {p.pid for p in procs}

    await fleet_command(bus, app, "demo", "rollback", by="tester", agent="worker")
    procs = await converge(bus, prefix, 2)
    assert [p.version for p in procs] == ["2", "2"]


async def test_supervisor_keeps_reconciling_after_the_nats_server_restarts(
    nats_process: Callable[..., NatsProcess], tmp_path: Path, prefix: str
) -> None:
    server = nats_process()
    own = ShoalSettings(
        nats_url=server.url,
        prefix=prefix,
        data_dir=tmp_path / "own",
        principal="tester",
        # Instances ride out an outage shorter than the lease; one that outlasts it must be
        # fenced (stopped) instead. A SIGKILL and restart under load can take several
        # seconds, so this test's lease is well above it.
        lease_ttl_s=12.0,
        presence_ttl_s=3.0,
    )
    sups = Supervisors(own, tmp_path / "own-logs")
    app = open_fleet_app(own)
    try:
        async with Bus.connect(server.url, own, name="test") as bus:
            await bus.provision()
            await apply_fleet(bus, app, parse_fleet_spec(spec(2)), by="tester")
            sups.start("sup-a")
            before = await converge(bus, prefix, 2)

            server.restart()  # SIGKILL, then the same port and store
            await asyncio.sleep(1.0)
            await fleet_command(bus, app, "demo", "scale", by="tester", replicas={"worker": 3})
            after = await converge(bus, prefix, 3, timeout=60)
            # The running instances rode out the outage; one more was started.
            assert {p.pid for p in before} < {p.pid for p in after}
    finally:
        sups.stop_all()
        app.close()


async def test_stopped_supervisor_drains_its_instances_and_hands_its_slots_over(
    bus: Bus, app: FleetApplication, supervisors: Supervisors, prefix: str
) -> None:
    a = supervisors.start("sup-a")
    await eventually(lambda: _supervisor_keys(bus), lambda k: k == ["_supervisor.sup-a"], 20, "a")
    await apply_fleet(bus, app, parse_fleet_spec(spec(2)), by="tester")
    await converge(bus, prefix, 2)
    supervisors.start("sup-b")
    await eventually(lambda: _supervisor_keys(bus), lambda k: len(k) == 2, 20, "b up")

    a.send_signal(signal.SIGTERM)  # graceful: drain, then delete its leases
    assert a.wait(20) == 0
    # Its leases are released at once (not left to expire), and sup-b runs both slots.
    assert await _supervisor_keys(bus) == ["_supervisor.sup-b"]
    taken = await converge(bus, prefix, 2)
    assert {p.supervisor for p in taken} == {"sup-b"}
    view = await describe_fleet(bus, "demo")
    assert sorted((s.slot, s.supervisor) for s in view.agents[0].slots) == [
        (0, "sup-b"),
        (1, "sup-b"),
    ]
