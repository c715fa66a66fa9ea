"""``ctx.tools`` for MCP-served tools goes through the MCP gateway, which enforces and
records each call once; the agent's own Python tools stay in-process."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext
from shoal.agents.digest import arguments_digest, load_digest_key
from shoal.agents.errors import Killed, PolicyDenied
from shoal.agents.fstools import list_files
from shoal.agents.mcp_tools import McpGatewayTools
from shoal.agents.runtime import default_mcp_tools
from shoal.bus import Bus, ShoalSettings
from shoal.gateway import GatewayConfig, RunningGateway, run_gateway
from shoal.ops import kill as ops_kill
from shoal.schemas import PolicyDecided, ToolCalled
from tests.agents.conftest import eventually, of_type, submit_task, wait_events
from tests.gateway.conftest import MakeKey

pytestmark = pytest.mark.timeout(90)

MANIFEST = CapabilityManifest.model_validate(
    {
        "tools": {
            "add": {"sensitivity": "public"},
            "send_email": {"sensitivity": "confidential"},
            "list_files": {"sensitivity": "public"},
        }
    }
)


REDACTED_TO = "[redacted 14 chars]"  # bo@example.com, confidential


@pytest.fixture
async def mcp_gateway(bus: Bus) -> AsyncIterator[RunningGateway]:
    config = GatewayConfig.from_dict(
        {"mcp_servers": {"tools": {"command": [sys.executable, "-m", "tests.gateway.mcp_tools"]}}}
    )
    async with run_gateway(bus, config, mcp_port=0) as running:
        yield running


async def test_ctx_tools_reach_mcp_tools_through_the_gateway_which_enforces_and_records_once(
    bus: Bus, settings: ShoalSettings, mcp_gateway: RunningGateway, make_key: MakeKey
) -> None:
    assert mcp_gateway.mcp_url is not None
    _, secret = await make_key(fleet="sdk", agent="worker", instance="sdk-1", manifest=MANIFEST)
    through = settings.model_copy(
        update={"gateway_mcp_url": mcp_gateway.mcp_url, "gateway_key": secret}
    )
    assert default_mcp_tools(through) == McpGatewayTools(mcp_gateway.mcp_url, secret)
    (settings.data_dir / "workspace").mkdir(parents=True, exist_ok=True)
    outcomes: list[Any] = []
    agent = Agent("worker", fleet="sdk", manifest=MANIFEST, tools=[list_files])

    @agent.handler("use")
    async def use(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        for name, arguments in task["calls"]:
            try:
                outcomes.append(await ctx.tools.call(name, **arguments))
            except Killed as e:
                outcomes.append(f"killed: {e.key}")
            except PolicyDenied as e:
                outcomes.append(f"refused: {e.rule}")
        return {}

    calls = [
        ("add", {"a": 2, "b": 3}),
        ("send_email", {"to": "bo@example.com", "body": "secret plan"}),
        ("delete_everything", {}),  # served by the MCP server, granted to no one
        ("list_files", {}),  # the agent's own Python tool: in-process
    ]
    runtime = AgentRuntime(Bus(bus.nc, through), agent, instance="sdk-1")
    async with runtime.running():
        first = await submit_task(bus, "sdk", "use", {"calls": calls})
        await wait_events(
            bus, bus.subjects.session_events(first.iid), lambda e: of_type(e, "task.completed")
        )
        await ops_kill.kill(bus, "tool", "add", by="tester")
        await eventually(lambda: "tool.add" in mcp_gateway.model.kills.active)
        second = await submit_task(bus, "sdk", "use", {"calls": [("add", {"a": 1, "b": 1})]})
        await wait_events(
            bus, bus.subjects.session_events(second.iid), lambda e: of_type(e, "task.completed")
        )
    assert outcomes == [
        5,
        "sent 11 chars to bo@example.com",
        "refused: manifest.tool",
        [],
        "killed: tool.add",
    ]
    events = await bus.session_events(first.iid)
    called = of_type(events, "tool.called")
    assert [
        (e.source.split("/")[2], e.data.tool, e.data.arguments, e.instance)  # type: ignore[attr-defined]
        for e in called
    ] == [
        ("gateway", "add", {"a": 2, "b": 3}, "sdk-1"),
        ("gateway", "send_email", {"to": REDACTED_TO, "body": "[redacted 11 chars]"}, "sdk-1"),
        ("sdk", "list_files", {}, "sdk-1"),
    ]
    assert all(isinstance(e.data, ToolCalled) for e in called)
    # Keyed as the SDK keys its own: the core tells two different confidential calls apart.
    sent = {"to": "bo@example.com", "body": "secret plan"}
    digest = arguments_digest(load_digest_key(settings), first.iid, "send_email", sent)
    assert called[1].data.arguments_digest == digest  # type: ignore[attr-defined]
    assert [e.data.call_id[:3] for e in called[:2]] == ["gw-", "gw-"]  # type: ignore[attr-defined]
    refused = [
        (e.source.split("/")[2], e.data.target, e.data.rule)
        for e in of_type(events, "policy.decided")
        if isinstance(e.data, PolicyDecided) and e.data.decision == "deny"
    ]
    assert refused == [("gateway", "delete_everything", "manifest.tool")]
    later = await bus.session_events(second.iid)
    assert of_type(later, "tool.called") == []
    assert [
        (e.source.split("/")[2], e.data.rule)  # type: ignore[attr-defined]
        for e in of_type(later, "policy.decided")
    ] == [("gateway", "kill.tool.add")]
