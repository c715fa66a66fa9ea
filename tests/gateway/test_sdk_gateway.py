"""The SDK's ``ctx.model`` through the gateway: one enforcement point, one record per call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, Killed, TaskContext
from shoal.agents.errors import ModelError
from shoal.agents.gateway_model import caller_headers
from shoal.agents.models import ChatMessage, ChatRequest
from shoal.agents.runtime import default_model_clients
from shoal.bus import Bus, ShoalSettings
from shoal.gateway import run_gateway
from shoal.gateway.offline import OfflineUpstream, serve_offline_upstream
from shoal.ops import kill as ops_kill
from shoal.policy import Approvals, apply_policy
from shoal.schemas import ApprovalRequested, ModelCalled, PolicyDecided
from tests.agents.conftest import eventually, of_type, submit_task, wait_events
from tests.gateway.conftest import MakeKey, offline_small
from tests.policy.test_approval_restarts import pending

pytestmark = pytest.mark.timeout(60)


async def test_ctx_model_goes_through_the_gateway_which_records_it_and_refuses_bypasses(
    bus: Bus,
    settings: ShoalSettings,
    make_key: MakeKey,
    upstream: tuple[str, OfflineUpstream],
) -> None:
    config = offline_small(upstream[0])
    manifest = CapabilityManifest(models=("offline-small",))
    _, secret = await make_key(fleet="sdk", agent="worker", instance="sdk-1", manifest=manifest)
    outcomes: list[str] = []
    agent = Agent("worker", fleet="sdk", manifest=manifest)

    @agent.handler("chat")
    async def chat(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await ctx.model.complete(task["text"])
            outcomes.append(answer.text)
        except Killed:
            # A handler that ignores the SDK's refusal and calls the client itself.
            client = ctx.model.clients[0]
            caller = caller_headers(ctx.model.session)
            request = ChatRequest(
                "offline-small", (ChatMessage("user", task["text"]),), caller=caller
            )
            try:
                await client.complete(request)
                outcomes.append("bypassed")
            except Killed as e:
                outcomes.append(f"refused by the gateway: {e.key}")
        return {}

    async with run_gateway(bus, config) as gw:
        through = settings.model_copy(update={"gateway_url": gw.url, "gateway_key": secret})
        clients = default_model_clients(through)
        assert [c.provider for c in clients] == ["shoal-gateway"]
        runtime = AgentRuntime(bus, agent, instance="sdk-1", model_clients=clients)
        async with runtime.running():
            first = await submit_task(bus, "sdk", "chat", {"text": "hello"})
            events = await wait_events(
                bus, bus.subjects.session_events(first.iid), lambda e: of_type(e, "task.completed")
            )
            await gw.model.drain()
            events = await bus.session_events(first.iid)
            called = of_type(events, "model.called")
            assert len(called) == 1  # the gateway's record; the SDK recorded none of its own
            assert called[0].source == f"shoal://gateway/{gw.replica}"
            assert isinstance(called[0].data, ModelCalled)
            # "hello": 2 tokens + 4 per message + 3; "ok: hello": 3
            assert (called[0].data.input_tokens, called[0].data.output_tokens) == (9, 3)
            assert called[0].instance == "sdk-1"

            await ops_kill.kill(bus, "model", "offline-small", by="tester")
            key = "model.offline-small"
            await eventually(lambda: key in gw.model.kills.active and key in runtime.kills.active)
            second = await submit_task(bus, "sdk", "chat", {"text": "again"})
            await wait_events(
                bus, bus.subjects.session_events(second.iid), lambda e: of_type(e, "task.completed")
            )
    assert outcomes == ["ok: hello", "refused by the gateway: model.offline-small"]
    assert upstream[1].requests == {"offline-small": 1}
    events = await bus.session_events(second.iid)
    refusals = [e.data for e in of_type(events, "policy.decided")]
    assert all(isinstance(d, PolicyDecided) for d in refusals)
    # The SDK's refusal (from the instance), then the gateway's (of the bypass).
    assert [e.source.split("/")[2] for e in of_type(events, "policy.decided")] == ["sdk", "gateway"]


async def test_a_call_the_upstream_fails_is_recorded_once_by_the_gateway_not_by_the_sdk(
    bus: Bus, settings: ShoalSettings, make_key: MakeKey
) -> None:
    manifest = CapabilityManifest(models=("offline-small",))
    _, secret = await make_key(fleet="sdk", agent="worker", instance="sdk-2", manifest=manifest)
    agent = Agent("worker", fleet="sdk", manifest=manifest)
    errors: list[str] = []

    @agent.handler("chat")
    async def chat(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        try:
            await ctx.model.complete(task["text"])
        except ModelError as e:
            errors.append(type(e).__name__)
        return {}

    failing = OfflineUpstream(fail={"offline-small": 500})
    async with serve_offline_upstream(failing) as (url, _):
        config = offline_small(url)
        async with run_gateway(bus, config) as gw:
            through = settings.model_copy(update={"gateway_url": gw.url, "gateway_key": secret})
            clients = default_model_clients(through)
            runtime = AgentRuntime(bus, agent, instance="sdk-2", model_clients=clients)
            async with runtime.running():
                task = await submit_task(bus, "sdk", "chat", {"text": "hello"})
                await wait_events(
                    bus,
                    bus.subjects.session_events(task.iid),
                    lambda e: of_type(e, "task.completed"),
                )
            await gw.model.drain()
    assert errors == ["ModelError"]
    called = of_type(await bus.session_events(task.iid), "model.called")
    assert [(e.source.split("/")[2], e.data.error is not None) for e in called] == [  # type: ignore[attr-defined]
        ("gateway", True)
    ]


async def test_a_high_tier_model_call_through_the_gateway_is_asked_once_for_its_prompt(
    bus: Bus,
    settings: ShoalSettings,
    make_key: MakeKey,
    upstream: tuple[str, OfflineUpstream],
) -> None:
    """The SDK's check and the gateway's digest the same prompt: one approval for the call."""
    rule = (
        '@id("small-needs-approval") @tier("high") '
        'permit(principal, action == Action::"model", resource == Model::"offline-small");'
    )
    await apply_policy(bus, rule, fleet="sdk", by="olga", reason="test")
    config = offline_small(upstream[0])
    manifest = CapabilityManifest(models=("offline-small",))
    _, secret = await make_key(fleet="sdk", agent="worker", instance="sdk-1", manifest=manifest)
    agent = Agent("worker", fleet="sdk", manifest=manifest)

    @agent.handler("chat")
    async def chat(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        return {"text": (await ctx.model.complete(task["text"])).text}

    approvals = await Approvals.open(bus)
    async with run_gateway(bus, config) as gw:
        through = settings.model_copy(update={"gateway_url": gw.url, "gateway_key": secret})
        runtime = AgentRuntime(
            bus, agent, instance="sdk-1", model_clients=default_model_clients(through)
        )
        async with runtime.running():
            await asyncio.sleep(0.3)  # the policy mirrors follow the bucket
            task = await submit_task(bus, "sdk", "chat", {"text": "hello"})
            asked = await pending(approvals)
            await approvals.decide(asked[0], grant=True, by="olga", reason="fine")
            await wait_events(
                bus, bus.subjects.session_events(task.iid), lambda e: of_type(e, "task.completed")
            )
    events = [s.event.data for s in await bus.session_events(task.iid) if s.event is not None]
    requested = [e for e in events if isinstance(e, ApprovalRequested)]
    assert [r.request_id for r in requested] == asked
    assert set(requested[0].arguments or {}) == {"prompt_digest"}
    assert upstream[1].requests == {"offline-small": 1}
