"""Kills that stop work in flight: handlers cancelled, calls refused, deliveries settled at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, Killed, TaskContext
from shoal.agents.delegation import derived_id
from shoal.agents.orchestrator import orchestrator
from shoal.agents.tools import ToolEnv, tool
from shoal.bus import Bus, KillScope, Stored
from shoal.ops.goals import build_goal, submit_goal
from shoal.ops.kill import kill, unkill
from shoal.schemas import (
    AgentKilled,
    CloudEvent,
    GoalSubmitted,
    PlannedTask,
    SessionKilled,
    TaskFailed,
    is_token,
)
from tests.agents.conftest import eventually, of_type, submit_task, wait_events
from tests.agents.workers import CountingModel

pytestmark = pytest.mark.timeout(60)

FLEET = "kl"


@dataclass
class Spinner:
    """A handler that catches :class:`Killed` and keeps calling, as a runaway agent would;
    ``swallow`` makes it catch its cancellation too."""

    swallow: bool = False
    probes: int = 0
    refused: int = 0
    cancelled: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def agent(self) -> Agent:
        @tool("probe")
        async def probe(env: ToolEnv) -> str:
            self.probes += 1
            return "pong"

        manifest = CapabilityManifest(models=("offline-small",), tools=("probe",))
        agent = Agent("spinner", fleet=FLEET, manifest=manifest, tools=[probe])

        @agent.handler("spin")
        async def spin(ctx: TaskContext, task: dict[str, Any]) -> dict[str, int]:
            if ctx.attempt > 1:
                return {"attempt": ctx.attempt}  # the released task, run again: no calls
            while not self.released.is_set():
                try:
                    await ctx.model.complete("hello")
                    await ctx.tools.call("probe")
                except Killed:
                    self.refused += 1
                except asyncio.CancelledError:
                    self.cancelled += 1
                    if not self.swallow:
                        raise
            return {}

        return agent


@asynccontextmanager
async def spinning(bus: Bus, spinner: Spinner) -> AsyncIterator[tuple[AgentRuntime, CountingModel]]:
    model = CountingModel()
    runtime = AgentRuntime(bus, spinner.agent(), instance="spin1", model_clients=[model])
    async with runtime.running():
        try:
            yield runtime, model
        finally:
            spinner.released.set()


async def stored(bus: Bus, iid: str) -> list[CloudEvent]:
    return [s.event for s in await bus.session_events(iid) if s.event]


async def test_a_handler_catching_killed_in_a_loop_is_cancelled_and_calls_nothing_after_the_kill(
    fbus: Bus,
) -> None:
    spinner = Spinner()
    async with spinning(fbus, spinner) as (runtime, model):
        task = await submit_task(fbus, FLEET, "spin", {})
        await eventually(lambda: model.answered >= 5)
        await kill(fbus, "session", task.iid, by="op", reason="runaway")
        await wait_events(
            fbus,
            fbus.subjects.session_events(task.iid),
            lambda e: any(k.source != "shoal://cli/op" for k in of_type(e, "session.killed")),
        )
        received, probes = model.received, spinner.probes
        await asyncio.sleep(0.3)  # a call still attempted would land now
        assert (model.received, spinner.probes) == (received, probes)
        events = await stored(fbus, task.iid)
    assert spinner.cancelled == 1 and runtime.runner.kills.interrupted == 1
    acknowledged = [e for e in of_type_events(events, "session.killed") if e.instance == "spin1"]
    assert len(acknowledged) == 1
    ack = acknowledged[0]
    assert isinstance(ack.data, SessionKilled)
    assert (ack.data.by, ack.data.reason, ack.data.interrupted) == ("op", "runaway", [task.iid])
    # Every model call that was answered is on the log; cancelled, it never tried another.
    assert len(of_type_events(events, "model.called")) == model.answered
    # Cancelled where it stood; only if Python 3.11's wait_for swallowed the cancellation
    # (inner call finishing at the same instant) did its next call meet the refusal, once
    # on the log, until the runtime cancelled it again.
    decided = [getattr(e.data, "rule", "") for e in of_type_events(events, "policy.decided")]
    assert decided in ([], ["kill.session"])
    failed = of_type_events(events, "task.failed")
    assert [
        (f.data.error_type, f.data.final) for f in failed if isinstance(f.data, TaskFailed)
    ] == [("Killed", True)]
    assert of_type_events(events, "task.completed") == []
    info = await fbus.js.consumer_info(fbus.topology.tasks.name, f"{FLEET}_spin")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_handler_swallowing_its_cancellation_gains_nothing_and_its_task_is_released(
    fbus: Bus,
) -> None:
    spinner = Spinner(swallow=True)
    async with spinning(fbus, spinner) as (_, model):
        task = await submit_task(fbus, FLEET, "spin", {})
        await eventually(lambda: model.answered >= 5)
        await kill(fbus, "fleet", FLEET, by="op", reason="runaway fleet")
        life = fbus.subjects.session_events("spin1")
        await wait_events(fbus, life, lambda e: len(of_type(e, "agent.killed")) == 2)
        events = await stored(fbus, task.iid)
        received, probes = model.received, spinner.probes
        await asyncio.sleep(0.3)
        assert (model.received, spinner.probes) == (received, probes)
        # It kept trying, in vain: each call after the kill is refused by cancelling again.
        assert spinner.cancelled >= 2 and spinner.refused == 0
        decided = of_type_events(events, "policy.decided")
        assert [(d.data.decision, d.data.rule) for d in decided] == [  # type: ignore[attr-defined]
            ("deny", "kill.fleet")
        ]  # the first refusal is recorded, the rest only counted
        released = [(e.data.error_type, e.data.final, e.data.attempt) for e in failed_of(events)]
        assert released == [("Killed", False, 1)]
        spinner.released.set()
        await unkill(fbus, "fleet", FLEET, by="op")
        await wait_events(
            fbus, fbus.subjects.session_events(task.iid), lambda e: of_type(e, "task.completed")
        )
        events = await stored(fbus, task.iid)
    killed = [
        s.event for s in await fbus.read(life) if s.event and s.event.short_type == "agent.killed"
    ]
    mine = [e.data for e in killed if e.source == "shoal://kl/spinner/spin1"]
    assert [(d.by, d.interrupted) for d in mine if isinstance(d, AgentKilled)] == [
        ("op", [task.iid])
    ]
    done = of_type_events(events, "task.completed")
    assert [(e.instance, getattr(e.data, "attempt", 0)) for e in done] == [("spin1", 2)]


def failed_of(events: list[CloudEvent]) -> list[Any]:
    return [e for e in events if isinstance(e.data, TaskFailed)]


def of_type_events(events: list[CloudEvent], short_type: str) -> list[CloudEvent]:
    return [e for e in events if e.short_type == short_type]


async def test_an_orchestrator_killed_and_unkilled_twice_runs_its_planned_task_once(
    fbus: Bus,
) -> None:
    plans: list[str] = []
    runs: list[str] = []

    async def planner(ctx: TaskContext, goal: GoalSubmitted) -> list[PlannedTask]:
        plans.append(ctx.iid)
        return [PlannedTask(iid="ignored", capability="work", input={"x": 1})]

    manifest = CapabilityManifest(delegates=("work",))
    boss = orchestrator(FLEET, planner=planner, manifest=manifest, task_timeout_s=30)
    worker = Agent("worker", fleet=FLEET, manifest=CapabilityManifest())

    @worker.handler("work")
    async def work(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        runs.append(ctx.iid)
        return {"x": task["x"]}

    orch = AgentRuntime(fbus, boss, instance="orch1")
    async with orch.running():
        goal = build_goal(FLEET, "do it", principal="tester")
        await submit_goal(fbus, goal)
        goal_events = fbus.subjects.events_filter(gid=goal.gid)
        await wait_events(fbus, goal_events, lambda e: of_type(e, "task.assigned"))
        life = fbus.subjects.session_events("orch1")
        kills: list[tuple[KillScope, str | None]] = [("fleet", FLEET), ("all", None)]
        for n, (scope, name) in enumerate(kills, start=1):
            await kill(fbus, scope, name, by="op")
            # The CLI's agent.killed and the instance's own, naming the goal it interrupted.
            await wait_events(fbus, life, partial(killed_count, 2 * n))
            await unkill(fbus, scope, name, by="op")
            await eventually(partial(resumed, orch, n + 1))  # the goal redelivered at once
        async with AgentRuntime(fbus, worker, instance="work1").running():
            events = await wait_events(fbus, goal_events, lambda e: of_type(e, "goal.completed"))
    assert plans == [goal.iid]  # planned once: the resumed goal took its recorded plan
    (planned,) = of_type(events, "goal.planned")
    child_iids = [t.iid for t in planned.data.tasks]  # type: ignore[attr-defined]
    assert len(child_iids) == 1
    assert [e.iid for e in of_type(events, "task.assigned")] == child_iids
    assert runs == child_iids
    assert [e.iid for e in of_type(events, "task.completed")] == child_iids
    released = [
        (e.data.by, e.data.interrupted)
        for e in await stored(fbus, "orch1")
        if isinstance(e.data, AgentKilled) and e.instance == "orch1" and e.source.endswith("orch1")
    ]
    assert released == [("op", [goal.iid]), ("op", [goal.iid])]
    (completed,) = of_type(events, "goal.completed")
    assert completed.data.result == {"outputs": {child_iids[0]: {"x": 1}}}  # type: ignore[attr-defined]


def resumed(runtime: AgentRuntime, attempt: int) -> bool:
    return [e.attempt for e in runtime.runner.inflight.values()] == [attempt]


def killed_count(count: int, events: list[Stored]) -> bool:
    return len(of_type(events, "agent.killed")) == count


def test_derived_ids_are_stable_ulid_shaped_tokens_with_the_parents_time_prefix() -> None:
    goal = "01JDQ7Z3K8M2N4P6R8T0V2X4Y6"
    first = derived_id(goal, "task", 0)
    assert first == derived_id(goal, "task", 0)
    assert len({first, derived_id(goal, "task", 1), derived_id(goal, "planned")}) == 3
    assert (len(first), first[:10], is_token(first)) == (26, goal[:10], True)
    other = derived_id("not-a-ulid", "task", 0)
    assert len(other) == 26 and is_token(other) and other != first
