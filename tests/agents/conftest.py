"""Fixtures for the agent tests: fast retry settings and helpers to wait on the event log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from shoal.bus import Bus, ShoalSettings, Stored
from shoal.schemas import CloudEvent, TaskAssigned, new_id


@pytest.fixture
def fast_settings(settings: ShoalSettings) -> ShoalSettings:
    """Retries after 50 ms (doubling), crash redelivery after 2 s: failure paths run fast."""
    return settings.model_copy(update={"task_retry_delay_s": 0.05, "task_ack_wait_s": 2.0})


@pytest.fixture
def fbus(bus: Bus, fast_settings: ShoalSettings) -> Bus:
    """The test's bus (same connection and streams) with :func:`fast_settings`."""
    return Bus(bus.nc, fast_settings)


async def wait_events(
    bus: Bus,
    filter_subject: str,
    until: Callable[[list[Stored]], object],
    timeout: float = 10.0,
) -> list[Stored]:
    """Poll the event log under ``filter_subject`` until ``until(events)`` or fail."""
    deadline = time.monotonic() + timeout
    while True:
        events = await bus.read(filter_subject)
        if until(events):
            return events
        if time.monotonic() > deadline:
            types = [s.event.type if s.event else s.error for s in events]
            raise AssertionError(f"timed out waiting on {filter_subject}; have {types}")
        await asyncio.sleep(0.05)


def of_type(events: list[Stored], short_type: str) -> list[CloudEvent]:
    """The parsed events of one type (``task.completed``), in log order."""
    return [s.event for s in events if s.event is not None and s.event.short_type == short_type]


async def submit_task(
    bus: Bus, fleet: str, capability: str, input: dict[str, object], gid: str | None = None
) -> CloudEvent:
    """Record a ``task.assigned`` as a client would: event log, then the work queue."""
    event = CloudEvent.new(
        TaskAssigned(capability=capability, input=input),
        iid=new_id(),
        gid=gid,
        principal="tester",
        source="shoal://cli/tester",
    )
    await bus.record(event, bus.subjects.tasks(fleet, capability))
    return event


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait until ``condition()`` holds; return the seconds it took (fail after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.0005)
    return time.monotonic() - started


async def shout_goal(
    bus: Bus, items: list[str], fleet: str = "wire"
) -> tuple[CloudEvent, list[Stored]]:
    """Run an orchestrator that plans one ``shout`` task per item, submit a goal of
    ``items`` and return it with its events once it completed or failed (the worker is the
    test's: a plain nats-py process)."""
    from shoal.agents import AgentRuntime, CapabilityManifest
    from shoal.agents.orchestrator import ModelPlanner, orchestrator
    from shoal.ops.goals import build_goal, submit_goal

    boss = orchestrator(
        fleet,
        planner=ModelPlanner("shout", input_key="text"),
        manifest=CapabilityManifest(models=("offline-small",), delegates=("shout",)),
        task_timeout_s=30,
    )
    goal = build_goal(fleet, "Shout these", principal="tester", inputs={"items": items})
    assert goal.gid is not None
    async with AgentRuntime(bus, boss).running():
        await submit_goal(bus, goal)
        events = await wait_events(
            bus,
            bus.subjects.goal_events(goal.gid),
            lambda e: len(of_type(e, "goal.completed")) + len(of_type(e, "goal.failed")) > 0,
            timeout=30,
        )
    return goal, events
