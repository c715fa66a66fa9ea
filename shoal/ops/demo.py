"""The demo, library side: bring up the demo fleet in-process, run a goal, collect its log.

Services are async context managers started in order before the goal is submitted and
stopped in reverse order after it ends: the demo fleet's instances come first, and a caller
adds its own (the core, a query service) through ``services``. The fleet runs as asyncio
tasks in this process (one connection, no process start-up cost); ``shoal agent run`` is the
same runtime in its own process.

The model calls go through a model gateway started for the demo in this process, in front of
an offline upstream (:func:`shoal.gateway.offline.offline_gateway`): each instance holds a
gateway key of its own, as a supervised instance does, and the ``model.called`` in the log
are the gateway's records. The tools are the demo's in-process Python tools (see
docs/gateways.md, "Which tools go where").
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from shoal.agents.agent import Agent
from shoal.agents.demo import (
    DEMO_FLEET,
    DEMO_GOAL,
    demo_agents,
    share_one_document,
    write_workspace,
)
from shoal.agents.gateway_model import GatewayModelClient
from shoal.agents.models import ModelClient, OfflineModelClient
from shoal.agents.runtime import AgentRuntime
from shoal.agents.tools import ToolEnv
from shoal.bus import Bus, ShoalSettings, Stored
from shoal.bus.genai import GenAI
from shoal.errors import InvalidEvent, Refused
from shoal.gateway.keys import KeyStore
from shoal.gateway.offline import offline_gateway
from shoal.ops.goals import build_goal, submit_goal
from shoal.policy import Approvals, ApprovalState, NotPending
from shoal.schemas import CloudEvent, GoalCompleted, GoalFailed, GoalPlanned, new_id, parse_event

__all__ = [
    "DemoResult",
    "GoalProgress",
    "ServiceFactory",
    "demo_services",
    "fleet_services",
    "run_demo",
]

ServiceFactory = Callable[[Bus], AbstractAsyncContextManager[Any]]
"""Starts a service on the bus when entered, stops it when exited."""

# How many instances of each demo agent the demo runs, and how long the model "thinks".
DEMO_INSTANCES = {"orchestrator": 1, "summarizer": 2}
DEMO_MODEL_LATENCY_S = 0.15
DEMO_APPROVAL_TIMEOUT_S = 3.0
"""How long the demo's one approval waits for a human before it times out (and says so)."""


@dataclass
class GoalProgress:
    """What is known of a running goal: tasks planned, tasks finished, the end event."""

    gid: str
    root_iid: str
    total: int | None = None
    done: int = 0
    failed: int = 0
    outcome: CloudEvent | None = None
    _finished_iids: set[str] = field(default_factory=set)

    def apply(self, event: CloudEvent) -> bool:
        """Fold one event of the goal; True if the progress changed."""
        data = event.data
        if isinstance(data, GoalPlanned) and event.iid == self.root_iid:
            self.total = len(data.tasks)
            return True
        if isinstance(data, GoalCompleted | GoalFailed) and event.iid == self.root_iid:
            self.outcome = event
            return True
        final = event.type == "shoal.task.completed" or (
            event.type == "shoal.task.failed" and getattr(data, "final", False)
        )
        if final and event.parentiid == self.root_iid and event.iid not in self._finished_iids:
            self._finished_iids.add(event.iid)
            self.done += 1
            self.failed += event.type == "shoal.task.failed"
            return True
        return False


@dataclass
class DemoResult:
    """The goal's end, its event log, and how long it took."""

    gid: str
    root_iid: str
    outcome: CloudEvent
    events: list[Stored]
    progress: GoalProgress
    elapsed_s: float
    workspace: Path


def demo_services(settings: ShoalSettings) -> list[ServiceFactory]:
    """Services ``shoal demo`` starts beside the fleet (the core, a query service…).

    The extension point for the parts of shoal that run in-process during the demo: each
    factory is entered before the goal is submitted and exited after it ends.
    """
    return []


def fleet_services(
    fleet: str = DEMO_FLEET,
    instances: dict[str, int] | None = None,
    model_latency_s: float = DEMO_MODEL_LATENCY_S,
    genai: GenAI | None = None,
    gateway_url: str | None = None,
) -> list[ServiceFactory]:
    """One factory per demo instance (runtimes sharing the demo's connection): through the
    gateway at ``gateway_url`` with a key of its own, else on the in-process offline model."""
    factories: list[ServiceFactory] = []
    for name, count in (instances or DEMO_INSTANCES).items():
        for _ in range(count):

            def factory(bus: Bus, name: str = name) -> AbstractAsyncContextManager[Any]:
                agent = demo_agents(fleet)[name]
                if gateway_url is not None:
                    return _gateway_instance(bus, agent, gateway_url, genai)
                clients = [OfflineModelClient(latency_s=model_latency_s)]
                return AgentRuntime(
                    bus, agent, model_clients=clients, concurrency=4, genai=genai
                ).running()

            factories.append(factory)
    return factories


@contextlib.asynccontextmanager
async def _gateway_instance(
    bus: Bus, agent: Agent, gateway_url: str, genai: GenAI | None
) -> AsyncIterator[AgentRuntime]:
    """One instance whose model calls go through the gateway with a key bound to it, revoked
    when it stops (what a supervisor does for the instances it starts)."""
    instance, store = new_id(), KeyStore(bus)
    key, secret = await store.create(
        fleet=agent.fleet,
        agent=agent.name,
        instance=instance,
        manifest=agent.manifest,
        by=bus.settings.principal,
    )
    client = GatewayModelClient(gateway_url, secret)
    clients: list[ModelClient] = [client]
    runtime = AgentRuntime(
        bus, agent, instance=instance, model_clients=clients, concurrency=4, genai=genai
    )
    try:
        async with runtime.running() as running:
            yield running
    finally:
        await client.aclose()
        await store.revoke(key.id, by=bus.settings.principal)


async def run_demo(
    bus: Bus,
    *,
    services: Sequence[ServiceFactory] = (),
    on_progress: Callable[[GoalProgress], None] | None = None,
    timeout_s: float = 45.0,
    fleet: str = DEMO_FLEET,
    genai: GenAI | None = None,
    approve: bool = False,
    approval_timeout_s: float = DEMO_APPROVAL_TIMEOUT_S,
) -> DemoResult:
    """Write the workspace, start the fleet and ``services``, run the goal, read its log.

    The goal asks for one approval (an email a document's ``share:`` line requests). With
    ``approve`` the demo grants it as the operator it runs as; otherwise nobody does, and
    it times out after ``approval_timeout_s``.
    """
    workspace = ToolEnv.for_settings(bus.settings).workspace
    write_workspace(workspace)
    share_one_document(workspace)
    goal = build_goal(
        fleet, DEMO_GOAL, principal=bus.settings.principal, inputs={"pattern": "*.md"}
    )
    assert goal.gid is not None
    progress = GoalProgress(goal.gid, goal.iid)
    finished = asyncio.Event()

    async def on_event(msg: Msg) -> None:
        try:
            event = parse_event(msg.data)
        except InvalidEvent:
            return
        if progress.apply(event) and on_progress is not None:
            on_progress(progress)
        if progress.outcome is not None:
            finished.set()

    started = time.monotonic()
    fleet_bus = Bus(
        bus.nc, bus.settings.model_copy(update={"approval_timeout_s": approval_timeout_s})
    )
    async with AsyncExitStack() as stack:
        # The gateway's own spans stay off: the SDK's chat span is the call's span in the
        # goal's trace (the gateway's record links to it through the traceparent header).
        gateway = await stack.enter_async_context(
            offline_gateway(fleet_bus, latency_s=DEMO_MODEL_LATENCY_S)
        )
        for factory in fleet_services(fleet, genai=genai, gateway_url=gateway.url):
            await stack.enter_async_context(factory(fleet_bus))
        for factory in services:
            await stack.enter_async_context(factory(bus))
        if approve:
            approver = asyncio.create_task(_approve(bus, goal.gid), name="demo-approver")
            stack.push_async_callback(_cancelled, approver)
        sub = await bus.nc.subscribe(bus.subjects.goal_events(goal.gid), cb=on_event)
        stack.push_async_callback(sub.unsubscribe)
        await bus.nc.flush(timeout=math.ceil(bus.settings.request_timeout))
        await submit_goal(bus, goal)
        try:
            await asyncio.wait_for(finished.wait(), timeout_s)
        except TimeoutError:
            raise Refused(
                f"goal {goal.gid} did not finish within {timeout_s:g}s "
                f"({progress.done}/{progress.total or '?'} tasks done)"
            ) from None
    elapsed = time.monotonic() - started
    assert progress.outcome is not None
    events = await bus.goal_events(goal.gid)
    return DemoResult(goal.gid, goal.iid, progress.outcome, events, progress, elapsed, workspace)


async def _approve(bus: Bus, gid: str) -> None:
    """Grant every approval of the goal as it appears (``shoal demo --approve``)."""
    approvals = await Approvals.open(bus)
    watcher = await approvals.kv.watchall()
    try:
        async for entry in watcher:
            if entry is None or entry.value is None:
                continue
            state = ApprovalState.model_validate_json(entry.value)
            if state.gid == gid and state.state == "pending" and state.tier == "high":
                reason = "approved with shoal demo --approve"
                with contextlib.suppress(NotPending):
                    await approvals.decide(
                        state.id, grant=True, by=bus.settings.principal, reason=reason
                    )
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def session_tree(events: Sequence[Stored], root_iid: str) -> dict[str | None, list[str]]:
    """Children by parent IID (``None`` holds the root), in order of first appearance."""
    children: dict[str | None, list[str]] = {}
    seen: set[str] = set()
    for item in events:
        event = item.event
        if event is None or event.iid in seen:
            continue
        seen.add(event.iid)
        parent = None if event.iid == root_iid else event.parentiid
        children.setdefault(parent, []).append(event.iid)
    return children
