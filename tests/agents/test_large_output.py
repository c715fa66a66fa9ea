"""A result too large for the bus fails its task by name; the worker and its connection go on."""

from __future__ import annotations

import pytest

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext
from shoal.bus import Bus
from shoal.ops.goals import build_goal, submit_goal
from shoal.schemas import GoalCompleted, GoalFailed, GoalSubmitted, TaskCompleted, TaskFailed
from tests.agents.conftest import of_type, submit_task, wait_events

pytestmark = pytest.mark.timeout(30)


def echo() -> Agent:
    agent = Agent("echo", fleet="calc", manifest=CapabilityManifest())

    @agent.handler("echo")
    async def repeat(ctx: TaskContext, task: dict[str, int]) -> dict[str, str]:
        return {"text": "x" * task["size"]}

    return agent


async def test_a_result_over_max_payload_fails_the_task_by_name_and_the_next_task_runs(
    fbus: Bus,
) -> None:
    async with AgentRuntime(fbus, echo(), instance="i1").running():
        big = await submit_task(fbus, "calc", "echo", {"size": 2 * fbus.nc.max_payload})
        events = await wait_events(
            fbus,
            fbus.subjects.session_events(big.iid),
            lambda e: any(getattr(f.data, "final", False) for f in of_type(e, "task.failed")),
        )
        small = await submit_task(fbus, "calc", "echo", {"size": 3})
        done = await wait_events(
            fbus, fbus.subjects.session_events(small.iid), lambda e: of_type(e, "task.completed")
        )
    failures = [f.data for f in of_type(events, "task.failed")]
    assert [(f.attempt, f.final, f.error_type) for f in failures if isinstance(f, TaskFailed)] == [
        (1, False, "MessageTooLarge"),
        (2, False, "MessageTooLarge"),
        (3, True, "MessageTooLarge"),
    ]
    assert isinstance(failures[0], TaskFailed)
    assert failures[0].error.startswith("a message of ")
    assert failures[0].error.endswith(
        f"exceeds the server's max_payload of {fbus.nc.max_payload} bytes; it was not sent"
    )
    [completed] = of_type(done, "task.completed")
    assert isinstance(completed.data, TaskCompleted)
    assert completed.data.output == {"text": "xxx"}
    assert fbus.nc.is_connected


def reporter() -> Agent:
    agent = Agent("reporter", fleet="calc", manifest=CapabilityManifest())

    @agent.on_goal
    async def report(ctx: TaskContext, goal: GoalSubmitted) -> GoalCompleted:
        size = int(str(goal.inputs["size"]))
        return GoalCompleted(result={"report": "r" * size}, summary="done")

    return agent


async def test_a_goal_outcome_over_max_payload_fails_the_goal_by_name_and_the_next_completes(
    fbus: Bus,
) -> None:
    big = build_goal("calc", "report", principal="tester", inputs={"size": 2 * 1024 * 1024})
    small = build_goal("calc", "report", principal="tester", inputs={"size": 2})
    assert big.gid is not None and small.gid is not None
    async with AgentRuntime(fbus, reporter(), instance="i1").running():
        await submit_goal(fbus, big)
        failed = await wait_events(
            fbus, fbus.subjects.goal_events(big.gid), lambda e: of_type(e, "goal.failed")
        )
        await submit_goal(fbus, small)
        done = await wait_events(
            fbus, fbus.subjects.goal_events(small.gid), lambda e: of_type(e, "goal.completed")
        )
    [outcome] = of_type(failed, "goal.failed")
    assert isinstance(outcome.data, GoalFailed)
    assert outcome.data.reason.startswith("the goal's outcome cannot be recorded: a message of ")
    assert outcome.data.reason.endswith("; it was not sent")
    assert of_type(failed, "goal.completed") == []
    [completed] = of_type(done, "goal.completed")
    assert isinstance(completed.data, GoalCompleted)
    assert completed.data.result == {"report": "rr"}
    info = await fbus.js.consumer_info(fbus.topology.goals.name, "calc_goals")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
