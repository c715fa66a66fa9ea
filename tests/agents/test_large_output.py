"""A result too large for the bus fails its task by name; the worker and its connection go on."""

from __future__ import annotations

import pytest

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext
from shoal.bus import Bus
from shoal.schemas import TaskCompleted, TaskFailed
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
