"""The official MCP client calls a real MCP server (stdio) through the gateway."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent

from shoal.bus import Bus
from shoal.gateway import GatewayConfig, RunningGateway, run_gateway
from shoal.ops import kill as ops_kill
from shoal.schemas import EventData, PolicyDecided, ToolCalled
from shoal.schemas.manifest import CapabilityManifest
from tests.gateway.conftest import MakeKey

MANIFEST = CapabilityManifest.model_validate(
    {"tools": {"add": {"sensitivity": "public"}, "send_email": {"sensitivity": "confidential"}}}
)


@pytest.fixture
async def mcp_gateway(bus: Bus) -> AsyncIterator[RunningGateway]:
    config = GatewayConfig.from_dict(
        {
            "mcp_servers": {
                "tools": {"command": [sys.executable, "-m", "tests.gateway.mcp_tools"]}
            },
            "argument_rules": {"send_email": {"to": r"[^@]+@example\.com"}},
        }
    )
    async with run_gateway(bus, config, mcp_port=0) as running:
        yield running


def _client(url: str, secret: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    return Client(streamable_http_client(url, http_client=http))


async def _events(bus: Bus, iid: str, n: int) -> list[EventData]:
    for _ in range(100):
        found = [s.event.data for s in await bus.session_events(iid) if s.event is not None]
        if len(found) >= n:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} events in {iid}")


def _text(result: object) -> str:
    content = getattr(result, "content", [])
    return "".join(c.text for c in content if isinstance(c, TextContent))


async def test_granted_tools_work_ungranted_are_refused_confidential_is_redacted(
    bus: Bus, mcp_gateway: RunningGateway, make_key: MakeKey
) -> None:
    assert mcp_gateway.mcp_url is not None
    key, secret = await make_key(manifest=MANIFEST)
    async with _client(mcp_gateway.mcp_url, secret) as client:
        listed = await client.list_tools()
        assert sorted(t.name for t in listed.tools) == ["add", "send_email"]
        assert _text(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
        sent = await client.call_tool("send_email", {"to": "bo@example.com", "body": "secret plan"})
        assert _text(sent) == "sent 11 chars to bo@example.com"
        with pytest.raises(MCPError) as refused:
            await client.call_tool("delete_everything", {})
        assert "manifest.tool" in str(refused.value)
        with pytest.raises(MCPError) as ruled:
            await client.call_tool("send_email", {"to": "x@evil.test", "body": "hi"})
        assert "argument.send_email.to" in str(ruled.value)
    events = await _events(bus, key.id, 4)
    calls = [e for e in events if isinstance(e, ToolCalled)]
    assert [(c.tool, c.arguments, c.result_class) for c in calls] == [
        ("add", {"a": 2, "b": 3}, "ok"),
        ("send_email", {"to": "[redacted 14 chars]", "body": "[redacted 11 chars]"}, "ok"),
    ]
    refusals = [(e.target, e.rule) for e in events if isinstance(e, PolicyDecided)]
    assert refusals == [
        ("delete_everything", "manifest.tool"),
        ("send_email", "argument.send_email.to"),
    ]


async def test_kill_tool_and_kill_mcp_server_stop_calls(
    bus: Bus, mcp_gateway: RunningGateway, make_key: MakeKey
) -> None:
    assert mcp_gateway.mcp_url is not None
    key, secret = await make_key(manifest=MANIFEST)
    async with _client(mcp_gateway.mcp_url, secret) as client:
        assert _text(await client.call_tool("add", {"a": 1, "b": 1})) == "2"
        await ops_kill.kill(bus, "tool", "add", by="tester")
        await _until(mcp_gateway, "tool.add")
        with pytest.raises(MCPError) as killed:
            await client.call_tool("add", {"a": 1, "b": 1})
        assert "kill.tool.add" in str(killed.value)
        await ops_kill.kill(bus, "mcp", "tools", by="tester")
        await _until(mcp_gateway, "mcp.tools")
        with pytest.raises(MCPError) as killed:
            await client.call_tool("send_email", {"to": "a@example.com", "body": "x"})
        assert "kill.mcp.tools" in str(killed.value)
    events = await _events(bus, key.id, 3)
    assert [type(e).__name__ for e in events] == ["ToolCalled", "PolicyDecided", "PolicyDecided"]


async def test_a_request_without_a_valid_key_gets_401(mcp_gateway: RunningGateway) -> None:
    assert mcp_gateway.mcp_url is not None
    async with httpx2.AsyncClient() as http:
        r = await http.post(
            mcp_gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": "Bearer sk-shoal-1-x", "Accept": "application/json"},
        )
    assert r.status_code == 401


async def _until(gateway: RunningGateway, key: str) -> None:
    for _ in range(200):
        if key in gateway.model.kills.active:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} never reached the gateway")
