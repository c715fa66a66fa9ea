"""One near-max-size message on each work subject stops nothing: it is dead-lettered, the rest runs.

The core, an orchestrator and a worker run in this process, each on its own connection (as
separate processes would): a connection one of them lost would show as that part stalling.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from pydantic import BaseModel

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext
from shoal.agents.orchestrator import ModelPlanner, orchestrator
from shoal.aggregates import CoreStats, run_core
from shoal.bus import Bus, ShoalSettings
from shoal.errors import InvalidEvent
from shoal.ops.goals import build_goal, submit_goal
from shoal.ops.inprocess import LocalPlatform
from shoal.schemas import GoalCompleted, TaskFailed, new_id, parse_event
from tests.agents.conftest import of_type, wait_events

pytestmark = pytest.mark.timeout(120)

FLEET = "big"


class Word(BaseModel):
    text: str


def shouter() -> Agent:
    agent = Agent("shouter", fleet=FLEET, manifest=CapabilityManifest())

    @agent.handler("shout")
    async def shout(ctx: TaskContext, task: Word) -> dict[str, str]:
        return {"text": task.text.upper()}

    return agent


def near_max(max_payload: int) -> bytes:
    """A JSON document 100 bytes under the server's limit, that is not a valid event."""
    head, tail = b'{"type": "shoal.task.assigned", "pad": "', b'"}'
    return head + b"x" * (max_payload - 100 - len(head) - len(tail)) + tail


async def serve(
    settings: ShoalSettings, agent: Agent, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    async with Bus.connect(settings.nats_url or "", settings, name=f"shoal-{agent.name}") as bus:
        async with AgentRuntime(bus, agent).running():
            ready.set()
            await stop.wait()


async def test_near_max_size_messages_are_dead_lettered_while_core_workers_and_orchestrator_work(
    bus: Bus, settings: ShoalSettings
) -> None:
    stop = asyncio.Event()
    ready = [asyncio.Event() for _ in range(3)]
    boss = orchestrator(
        FLEET,
        planner=ModelPlanner("shout", input_key="text"),
        manifest=CapabilityManifest(models=("offline-small",), delegates=("shout",)),
        task_timeout_s=30,
    )
    parts: list[asyncio.Task[object]] = [
        asyncio.create_task(run_core(settings, settings.nats_url or "", stop, ready=ready[0])),
        asyncio.create_task(serve(settings, boss, stop, ready[1])),
        asyncio.create_task(serve(settings, shouter(), stop, ready[2])),
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)

    raw = near_max(bus.nc.max_payload)
    assert len(raw) == 1024 * 1024 - 100
    poisoned = {
        "events": bus.subjects.event(None, new_id(), "tool.called"),
        "tasks": bus.subjects.tasks(FLEET, "shout"),
        "goals": bus.subjects.goals(FLEET),
    }
    for subject in poisoned.values():
        await bus.js.publish(subject, raw)
    dl_stream = bus.topology.deadletter.name
    for _ in range(600):
        if (await bus.js.stream_info(dl_stream)).state.messages == 3:
            break
        await asyncio.sleep(0.05)

    # A good goal submitted after them completes, through the orchestrator and the worker.
    goal = build_goal(FLEET, "Shout these", principal="tester", inputs={"items": ["a", "b"]})
    assert goal.gid is not None
    await submit_goal(bus, goal)
    events = await wait_events(
        bus, bus.subjects.goal_events(goal.gid), lambda e: of_type(e, "goal.completed"), 60
    )
    [done] = of_type(events, "goal.completed")
    assert isinstance(done.data, GoalCompleted)
    assert sorted(o["text"] for o in done.data.result["outputs"].values()) == ["A", "B"]
    # …and the core ingested every event on the log, the dead-lettered one included.
    await LocalPlatform(bus).caught_up(timeout=30)
    assert [p.done() for p in parts] == [False, False, False]

    with pytest.raises(InvalidEvent) as invalid:
        parse_event(raw)
    reason = str(invalid.value)[:1000]
    for origin, subject in poisoned.items():
        [item] = await bus.read(bus.subjects.deadletter(origin), stream=dl_stream)
        record = await bus.js.get_msg(dl_stream, item.seq)
        headers = record.headers or {}
        assert (headers["Shoal-Reason"], headers["Shoal-Original-Subject"]) == (reason, subject)
        assert (headers["Shoal-Size"], headers["Shoal-Sha256"]) == (
            str(len(raw)),
            hashlib.sha256(raw).hexdigest(),
        )
        assert await bus.deadletter_body(record) == raw
    # The poisoned task is also on the log as a final failure, as any invalid task is.
    failed = [
        e
        for s in await bus.read(bus.subjects.all_events)
        if (e := s.event) is not None and isinstance(e.data, TaskFailed)
    ]
    assert [(f.data.error_type, f.data.final) for f in failed] == [("InvalidTask", True)]  # type: ignore[attr-defined]

    stop.set()
    results = await asyncio.wait_for(asyncio.gather(*parts), 60)
    stats = results[0]
    assert isinstance(stats, CoreStats)
    assert (stats.dead_lettered, stats.failures) == (1, 0)
