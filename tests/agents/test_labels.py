"""Attribution labels travel from the goal to every task it causes, on a real server."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext
from shoal.agents.orchestrator import ModelPlanner, orchestrator
from shoal.bus import Bus
from shoal.ops.goals import build_goal, submit_goal
from shoal.schemas import Labels, TaskAssigned
from tests.agents.conftest import of_type, wait_events

pytestmark = pytest.mark.timeout(30)


class Item(BaseModel):
    item: str


def _worker() -> Agent:
    agent = Agent(
        "worker", fleet="lab", version="1.1", manifest=CapabilityManifest(delegates=("check",))
    )

    @agent.handler("fix")
    async def fix(ctx: TaskContext, task: Item) -> dict[str, str]:
        # One child with its own task class over the inherited labels, one with none.
        await ctx.delegate("check", {"item": task.item}, labels=Labels(task_class="check"))
        await ctx.delegate("check", {"item": task.item})
        return {"fixed": task.item}

    @agent.handler("check")
    async def check(ctx: TaskContext, task: Item) -> dict[str, str]:
        return {"checked": task.item}

    return agent


async def test_goal_labels_reach_planned_tasks_and_their_children(fbus: Bus) -> None:
    labels = Labels(team="payments", workflow="triage", task_class="bugfix", prompt_version="v3")
    boss = orchestrator(
        "lab",
        planner=ModelPlanner("fix", input_key="item"),
        manifest=CapabilityManifest(models=("offline-small",), delegates=("fix",)),
        task_timeout_s=20,
    )
    goal = build_goal(
        "lab", "fix it", principal="tester", inputs={"items": ["a", "b"]}, labels=labels
    )
    assert goal.gid is not None
    async with AgentRuntime(fbus, boss).running(), AgentRuntime(fbus, _worker()).running():
        await submit_goal(fbus, goal)
        events = await wait_events(
            fbus,
            fbus.subjects.goal_events(goal.gid),
            lambda e: of_type(e, "goal.completed") or of_type(e, "goal.failed"),
            timeout=25,
        )
    assert of_type(events, "goal.completed"), [e.short_type for e in of_type(events, "goal.failed")]
    assigned = of_type(events, "task.assigned")
    by_capability: dict[str, list[dict[str, str] | None]] = {}
    for e in assigned:
        assert isinstance(e.data, TaskAssigned)
        values = e.data.labels.values() if e.data.labels is not None else None
        by_capability.setdefault(e.data.capability, []).append(values)
    inherited = labels.values()
    assert by_capability["fix"] == [inherited, inherited]
    assert sorted(by_capability["check"], key=lambda v: (v or {}).get("task_class", "")) == [
        inherited,
        inherited,
        {**inherited, "task_class": "check"},
        {**inherited, "task_class": "check"},
    ]
