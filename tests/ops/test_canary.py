"""``fleet upgrade --canary`` against real supervisors, agent processes and the core: a worse
version rolls back by itself and a good one is promoted, both in ``fleet history`` with the
figures, which are recounted here from the raw event log."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.aggregates import run_core
from shoal.aggregates.fleet import FleetApplication, FleetHistoryEntry
from shoal.bus import Bus, ShoalSettings
from shoal.ops.canary import canary_controller
from shoal.schemas import AgentStarted, CloudEvent, TaskAssigned, TaskCompleted, new_id
from shoal.schemas.fleet import FleetDesired
from shoal.stats import two_proportion
from tests.ops.fleetprocs import Supervisors, agent_procs, eventually, process_env, procs_now
from tests.ops.test_supervisor import app, settings, supervisors

__all__ = ["app", "settings", "supervisors"]  # the supervisor tests' fixtures, reused

pytestmark = pytest.mark.timeout(400)

SPEC = """
fleet: demo
rollout: {batch: 2, first_heartbeat_s: 60}
agents:
  - name: worker
    target: tests.ops.canary_worker:canary_agent
    version: "1"
    replicas: 2
    concurrency: 2
"""


async def shoal(settings: ShoalSettings, *args: str) -> tuple[int, str, str]:
    """Run the CLI; on a hang, kill it and fail with what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal", *args,
        env=process_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 150)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"shoal {' '.join(args)} hung: {out!r} {err!r}") from None
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def core(bus: Bus, settings: ShoalSettings) -> AsyncIterator[None]:
    """The core, with its canary controller, in this event loop."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_core(settings, settings.nats_url or "", stop, ready=ready, verdicts=canary_controller)
    )
    await asyncio.wait_for(ready.wait(), 30)
    yield
    stop.set()
    await asyncio.wait_for(task, 30)


async def submit(bus: Bus, n: int) -> None:
    events = [
        CloudEvent.new(
            TaskAssigned(capability="job", input={"n": i}),
            iid=new_id(),
            principal="tester",
            source="shoal://cli/tester",
        )
        for i in range(n)
    ]
    await bus.publish_many(events)
    await bus.publish_many((bus.subjects.tasks("demo", "job"), e) for e in events)


async def outcomes(bus: Bus) -> list[tuple[int, str, bool]]:
    """(seq, instance, succeeded) of every task that ended, in log order."""
    out = []
    for short_type in ("task.completed", "task.failed"):
        for s in await bus.read(bus.subjects.events_filter(short_type=short_type)):
            assert s.event is not None and s.event.instance is not None
            out.append((s.seq, s.event.instance, isinstance(s.event.data, TaskCompleted)))
    return sorted(out)


async def recount(bus: Bus, up_to: int) -> dict[str, tuple[int, int]]:
    """Successes and sessions per version up to ``up_to``, from the raw log alone."""
    version_of = {}
    for s in await bus.read(bus.subjects.events_filter(short_type="agent.started")):
        assert s.event is not None and isinstance(s.event.data, AgentStarted)
        version_of[s.event.instance] = s.event.data.version
    counts: dict[str, tuple[int, int]] = {}
    for seq, instance, ok in await outcomes(bus):
        if seq <= up_to:
            good, n = counts.get(version_of[instance], (0, 0))
            counts[version_of[instance]] = (good + ok, n + 1)
    return counts


async def ended(bus: Bus, n: int) -> None:
    def enough(o: list[tuple[int, str, bool]]) -> bool:
        return len(o) >= n

    await eventually(lambda: outcomes(bus), enough, 60, f"{n} outcomes")


async def feed_until(
    bus: Bus, app: FleetApplication, command: str, rounds: int = 40
) -> FleetHistoryEntry:
    """Submit tasks ten at a time until the fleet's last command is ``command``."""
    for _ in range(rounds):
        history = await asyncio.to_thread(app.history, "demo")
        if history[-1].command == command:
            return history[-1]
        before = len(await outcomes(bus))  # counted first: the ten may end at once
        await submit(bus, 10)
        await ended(bus, before + 10)
    raise AssertionError(f"no {command} after {rounds * 10} more tasks: {history[-1]}")


async def desired(bus: Bus) -> FleetDesired:
    kv = await bus.kv(bus.topology.fleets.name)
    return FleetDesired.model_validate_json((await kv.get("demo")).value or b"")


async def canary(settings: ShoalSettings, version: str, slots: str) -> str:
    code, out, err = await shoal(
        settings, "fleet", "upgrade", "demo", "worker", version, "--canary", slots,
        "--min-samples", "20",
    )  # fmt: skip
    assert code == 0, err
    return out.splitlines()[-1]


async def check_verdict(bus: Bus, entry: FleetHistoryEntry, kind: str) -> dict[str, Any]:
    """The history's figures are the log's, the test's, and the published event's."""
    e: dict[str, Any] = entry.detail["evidence"]
    counts = await recount(bus, e["seq"])
    assert (e["successes_a"], e["n_a"]) == counts[e["from_version"]]
    assert (e["successes_b"], e["n_b"]) == counts[e["to_version"]]
    assert min(e["n_a"], e["n_b"]) >= 20
    t = two_proportion(e["successes_a"], e["n_a"], e["successes_b"], e["n_b"], alpha=0.01)
    assert e["p_value"] == (None if t.p_value is None else float(f"{t.p_value:.6g}"))
    [published] = await bus.read(bus.subjects.events_filter(short_type=f"evaluation.{kind}"))
    assert published.event is not None and published.event.source == "shoal://core"
    data = published.event.data.model_dump()
    assert {k: data[k] for k in ("from_version", "to_version", "n_a", "n_b", "seq")} == {
        k: e[k] for k in ("from_version", "to_version", "n_a", "n_b", "seq")
    }
    return e


async def test_a_worse_canary_rolls_back_by_itself_and_a_good_one_is_promoted(
    bus: Bus,
    settings: ShoalSettings,
    supervisors: Supervisors,
    app: FleetApplication,
    core: None,
    tmp_path: Path,
) -> None:
    supervisors.start("sup-a")
    spec_file = tmp_path / "fleet.yaml"
    spec_file.write_text(SPEC)
    code, _, err = await shoal(settings, "fleet", "apply", str(spec_file), "--wait")
    assert code == 0, err
    await submit(bus, 20)  # the baseline: version 1 always succeeds
    await ended(bus, 20)

    # A canary of the version that fails 60 %: one slot of two, the other holds version 1.
    line = await canary(settings, "2", "1")
    assert line.startswith("canary: 1 of 2 instance(s) of worker run 2"), line
    assert sorted(p.version for p in agent_procs(settings.prefix)) == ["1", "2"]
    rollback = await feed_until(bus, app, "rollback")
    assert (rollback.by, rollback.detail["agent"], rollback.detail["version"]) == (
        "core",
        "worker",
        "2",
    )
    e = await check_verdict(bus, rollback, "regressed")
    assert (e["from_version"], e["to_version"], e["canary"]) == ("1", "2", True)
    assert e["successes_b"] / e["n_b"] <= 0.5 and e["successes_a"] == e["n_a"]
    assert e["p_value"] < 0.01
    assert f"canary regressed: 2 {e['successes_b']}/{e['n_b']}" in rollback.reason
    doc = await desired(bus)
    assert (doc.agents["worker"].version, doc.agents["worker"].canary) == ("1", None)
    await eventually(
        lambda: procs_now(settings.prefix),
        lambda ps: sorted(p.version for p in ps) == ["1", "1"],
        60,
        "both slots back on version 1",
    )
    code, out, _ = await shoal(settings, "--json", "fleet", "history", "demo")
    assert code == 0
    commands = [(h["command"], h["by"]) for h in json.loads(out)]
    assert commands == [("apply", "tester"), ("canary", "tester"), ("rollback", "core")]

    # A good version: not worse after 20 sessions of each, so every slot moves to it.
    line = await canary(settings, "3", "50%")
    assert line.startswith("canary: 1 of 2 instance(s) of worker run 3"), line
    promote = await feed_until(bus, app, "promote")
    assert (promote.by, promote.detail["version"]) == ("core", "3")
    e = await check_verdict(bus, promote, "passed")
    assert (e["from_version"], e["to_version"], e["successes_b"]) == ("1", "3", e["n_b"])
    doc = await desired(bus)
    worker = doc.agents["worker"]
    assert (worker.version, worker.previous_version, worker.canary) == ("3", "1", None)
    await eventually(
        lambda: procs_now(settings.prefix),
        lambda ps: sorted(p.version for p in ps) == ["3", "3"],
        90,
        "both slots on version 3",
    )
