"""The SDK's client of the MCP gateway: ``ctx.tools`` for tools served by MCP servers.

With ``SHOAL_GATEWAY_MCP_URL`` and ``SHOAL_GATEWAY_KEY`` set, a tool the agent does not
implement in Python is called through the gateway's Streamable HTTP MCP endpoint with the
official ``mcp`` client (:class:`shoal.agents.gateways.ToolGateway` routes it here). The
gateway checks kill switches, the key's grant, argument rules and policy, forwards the call
to the MCP server that serves the tool, and records ``tool.called`` (redacted) or
``policy.decided`` itself; the SDK records nothing of its own for the call. Its refusals
come back as the SDK's typed errors (:class:`Killed`, :class:`PolicyDenied`), a failed tool
as :class:`ToolFailed`.

The gateway keeps no MCP session (stateless), so each call is one short-lived client: the
session headers (``X-Shoal-Iid`` …) are the calling session's, and nothing is left open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.agents.errors import Killed, PolicyDenied, ToolFailed
from shoal.agents.gateway_model import caller_headers
from shoal.bus.tracecontext import inject_headers

if TYPE_CHECKING:
    from shoal.agents.session import Session
    from shoal.bus.genai import ToolCall

__all__ = ["McpGatewayTools", "tool_result"]

E = TypeVar("E", bound=BaseException)

REFUSED = -32003  # the MCP gateway's refusals (shoal.gateway.mcp)
_REFUSAL = re.compile(r"refused by (\S+): (.*)", re.DOTALL)


@dataclass(frozen=True)
class McpGatewayTools:
    """Tools of MCP servers, through the MCP gateway at ``url`` (``…/mcp``) with ``api_key``."""

    url: str
    api_key: str
    timeout_s: float = 30.0

    async def call(
        self, span: ToolCall, name: str, arguments: dict[str, Any], session: Session
    ) -> Any:
        """Call ``name``; its result as a Python value (see :func:`tool_result`)."""
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared.exceptions import MCPError

        headers = inject_headers(
            {"Authorization": f"Bearer {self.api_key}", **dict(caller_headers(session))}
        )
        try:
            async with (
                httpx2.AsyncClient(headers=dict(headers), timeout=self.timeout_s) as http,
                Client(streamable_http_client(self.url, http_client=http)) as client,
            ):
                result = await client.call_tool(name, arguments)
        except Exception as raised:  # the SDK's task groups wrap what the gateway answered
            e = _first(raised, MCPError)
            if e is None:
                failed = f"MCP gateway {self.url}: {type(raised).__name__}: {raised}"
                raise ToolFailed(failed, tool=name, error_type=type(raised).__name__) from None
            refusal = _refusal(e.code, e.message, name)
            if refusal is None:
                failed = f"tool {name} failed: {e.message}"
                raise ToolFailed(failed, tool=name, error_type="MCPError") from None
            span.decided("deny", refusal.rule)
            raise refusal from None
        span.decided("allow")
        if result.is_error:
            text = _text(result)
            raise ToolFailed(f"tool {name} failed: {text}", tool=name, error_type="ToolError")
        return tool_result(result)


def _first(error: BaseException, kind: type[E]) -> E | None:
    """``error`` itself if it is a ``kind``, else the first one inside its exception group."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first(inner, kind)
            if found is not None:
                return found
    return None


def _refusal(code: int, message: str, tool: str) -> PolicyDenied | None:
    if code != REFUSED:
        return None
    found = _REFUSAL.fullmatch(message)
    if found is None:  # the key itself was refused (revoked, unknown)
        return PolicyDenied(message, rule="gateway.key", target=tool)
    rule, reason = found.groups()
    if rule.startswith("kill."):
        return Killed(reason, key=rule.removeprefix("kill."), target=tool)
    return PolicyDenied(reason, rule=rule, target=tool)


def tool_result(result: Any) -> Any:
    """A ``CallToolResult`` as a Python value: its structured content (a lone ``result``
    unwrapped, as FastMCP wraps plain values), else its text."""
    structured = getattr(result, "structured_content", None)
    if isinstance(structured, dict) and set(structured) == {"result"}:
        return structured["result"]
    if structured is not None:
        return structured
    return _text(result)


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in getattr(result, "content", []))
