"""The MCP gateway: one Streamable HTTP MCP endpoint in front of the configured MCP servers.

Built on the official ``mcp`` SDK: a low-level :class:`mcp.server.Server` whose handlers list
and call the tools of upstream servers (each a stdio command or a Streamable HTTP URL, kept
connected by an SDK :class:`mcp.Client`), served stateless (no session in memory, so any
replica answers any request) by uvicorn. For every request the caller's gateway key
(``Authorization: Bearer``) decides what it sees and may do:

- ``tools/list`` lists only the tools its manifest grants;
- ``tools/call`` checks, in order, the kill switches (the tool's, the MCP server's
  ``mcp.<server>``, and the caller's scopes), the grant, then the argument rules of the
  gateway file; a refusal is recorded as ``policy.decided`` and answered with an MCP error;
- an allowed call is forwarded and recorded as ``tool.called`` with its arguments redacted by
  the grant's sensitivity (the same :func:`shoal.agents.gateways.redact` the SDK uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolRequestParams, CallToolResult, ListToolsResult, Tool
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shoal.agents.digest import arguments_digest
from shoal.agents.gateways import redact
from shoal.agents.killswitch import KillWatcher, kill_keys
from shoal.agents.toolrecord import ToolCallRecord
from shoal.aggregates.trust import GATEWAY_CALL_PREFIX
from shoal.bus import Bus, kill_key
from shoal.bus.genai import GenAI, ToolCall
from shoal.errors import PortInUse
from shoal.gateway.caller import Caller
from shoal.gateway.config import GatewayConfig, McpServer
from shoal.gateway.errors import GatewayError
from shoal.gateway.keys import KeyMirror, VirtualKey
from shoal.gateway.policy import GatewayPolicy
from shoal.gateway.record import Recorder
from shoal.schemas import new_id

__all__ = ["McpGateway"]

log = logging.getLogger(__name__)

REFUSED = -32003  # JSON-RPC server error range: the gateway refused the call


@dataclass(frozen=True)
class _Upstream:
    server: str
    version: str
    client: Client
    tool: Tool


class McpGateway:
    """Upstream MCP clients, the gateway's MCP server, and its HTTP listener."""

    def __init__(
        self,
        bus: Bus,
        config: GatewayConfig,
        *,
        kills: KillWatcher,
        keys: KeyMirror,
        recorder: Recorder,
        genai: GenAI | None = None,
        policy: GatewayPolicy | None = None,
        digest_key: bytes | None = None,
    ) -> None:
        self.bus = bus
        self.digest_key = digest_key  # keys tool.called's arguments digest, as the SDK's does
        self.policy = policy
        self.config = config
        self.kills = kills
        self.keys = keys
        self.recorder = recorder
        self.genai = genai or GenAI.disabled()
        self.tools: dict[str, _Upstream] = {}
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._clients: asyncio.Task[None] | None = None
        self._release = asyncio.Event()

    async def start(self, host: str, port: int) -> str:
        """Connect the upstream servers, listen; return the endpoint URL."""
        ready = asyncio.Event()
        self._clients = asyncio.create_task(self._hold_clients(ready), name="mcp-upstreams")
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([waiter, self._clients], return_when="FIRST_COMPLETED")
        if not ready.is_set():
            waiter.cancel()
            await self._clients  # raises why an upstream could not be reached
        mcp = Server("shoal-gateway", on_list_tools=self._list, on_call_tool=self._call)
        manager = StreamableHTTPSessionManager(app=mcp, stateless=True, json_response=True)

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            async with manager.run():
                yield

        endpoint = _Authenticated(StreamableHTTPASGIApp(manager), self.keys)
        app = Starlette(routes=[Route("/mcp", endpoint=endpoint)], lifespan=lifespan)
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
        )
        # Bound here, not by uvicorn: it would sys.exit() the whole process on a taken port.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            await self.stop()
            raise PortInUse(f"the MCP gateway cannot listen on {host}:{port}: {e.strerror}") from e
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve([sock]), name="mcp-gateway")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises why it stopped
            await asyncio.sleep(0.01)
        return f"http://{host}:{sock.getsockname()[1]}/mcp"

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._release.set()
        if self._clients is not None:
            await self._clients

    async def _hold_clients(self, ready: asyncio.Event) -> None:
        # The SDK's clients live in anyio task groups, which must be left by the task that
        # entered them: one task holds them all from connect to stop.
        async with contextlib.AsyncExitStack() as stack:
            for name, spec in self.config.mcp_servers.items():
                client = await stack.enter_async_context(_client(spec))
                info = client.server_info
                version = (info.version if info is not None else None) or "1"
                for tool in (await client.list_tools()).tools:
                    if tool.name in self.tools:
                        hidden_by = self.tools[tool.name].server
                        log.warning("tool %s of %s is hidden by %s's", tool.name, name, hidden_by)
                        continue
                    self.tools[tool.name] = _Upstream(name, version, client, tool)
            ready.set()
            await self._release.wait()

    # -- the MCP handlers -------------------------------------------------------------------
    async def _caller(self, ctx: ServerRequestContext[Any, Any]) -> Caller:
        headers: Mapping[str, str] = getattr(ctx.request, "headers", None) or {}
        key = await _key(self.keys, headers)
        if key is None:
            raise MCPError(REFUSED, "invalid or revoked gateway key")
        try:
            return Caller.of(key, headers)
        except GatewayError as e:
            raise MCPError(REFUSED, e.message) from None

    async def _list(self, ctx: ServerRequestContext[Any, Any], params: Any) -> ListToolsResult:
        caller = await self._caller(ctx)
        grants = caller.key.manifest
        return ListToolsResult(
            tools=[u.tool for name, u in self.tools.items() if grants.grant(name) is not None]
        )

    async def _call(
        self, ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> CallToolResult:
        caller = await self._caller(ctx)
        call_id = f"{GATEWAY_CALL_PREFIX}{new_id()}"  # the same id on the span and on tool.called
        attrs = caller.span_attributes() if self.genai.enabled else {}
        with self.genai.execute_tool(params.name, attrs, call_id=call_id) as span:
            return await self._traced_call(span, call_id, caller, params)

    async def _traced_call(
        self, span: ToolCall, call_id: str, caller: Caller, params: CallToolRequestParams
    ) -> CallToolResult:
        name, arguments = params.name, dict(params.arguments or {})
        upstream = self.tools.get(name)
        try:
            await self._check(caller, name, arguments, upstream)
        except MCPError:
            span.decided("deny")
            raise
        span.decided("allow")
        assert upstream is not None  # _check refused an unknown tool
        grant = caller.key.manifest.grant(name)
        assert grant is not None
        redacted = redact(arguments, grant)
        span.arguments(redacted)
        digest = (
            arguments_digest(self.digest_key, caller.iid, name, arguments)
            if self.digest_key is not None
            else None
        )
        record = ToolCallRecord(call_id, name, upstream.version, redacted, grant, (), digest)
        result: Any = None
        try:
            result = await upstream.client.call_tool(name, arguments)
        except Exception as e:
            record.ended("error", f"{type(e).__name__}: {e}")
            raise MCPError(-32603, f"tool {name} failed: {record.error}") from e
        finally:
            if getattr(result, "is_error", False):
                record.result_class = "error"
            await self.recorder.emit(record.event(), caller)
        assert isinstance(result, CallToolResult)
        return result

    async def _check(
        self, caller: Caller, name: str, arguments: dict[str, Any], upstream: _Upstream | None
    ) -> None:
        """Kill switches, grant, argument rules: raise (after recording) what refuses."""
        keys = kill_keys(caller.scope, tool=name)
        if upstream is not None:
            keys.insert(1, kill_key("mcp", upstream.server))
        hit = self.kills.match(keys)
        if hit is not None:
            key, switch = hit
            reason = f"kill switch {key} set by {switch.by}" + (
                f": {switch.reason}" if switch.reason else ""
            )
            await self._refuse(caller, name, f"kill.{key}", reason)
        if caller.key.manifest.grant(name) is None:
            reason = (
                f"tool {name!r} is not in the manifest of {caller.key.fleet}/{caller.key.agent}"
            )
            await self._refuse(caller, name, "manifest.tool", reason)
        if upstream is None:
            await self._refuse(caller, name, "tool.missing", f"no MCP server serves tool {name!r}")
        for arg, pattern in self.config.argument_rules.get(name, {}).items():
            value = arguments.get(arg)
            if value is not None and re.fullmatch(pattern, str(value)) is None:
                reason = f"argument {arg!r} of {name} does not match {pattern!r}"
                await self._refuse(caller, name, f"argument.{name}.{arg}", reason)
        if self.policy is not None:  # the same Cedar rules and tiers as the SDK's
            try:
                await self.policy.check(caller, "tool.call", name, arguments)
            except GatewayError as e:  # recorded by the policy as policy.decided
                raise MCPError(REFUSED, f"refused by {e.rule}: {e.message}") from e

    async def _refuse(self, caller: Caller, tool: str, rule: str, reason: str) -> None:
        await self.recorder.refused(caller, "tool.call", tool, rule, reason)
        raise MCPError(REFUSED, f"refused by {rule}: {reason}")


def _client(spec: McpServer) -> Client:
    if spec.command is not None:
        params = StdioServerParameters(
            command=spec.command[0], args=spec.command[1:], env=spec.env or None
        )
        return Client(params)
    assert spec.url is not None
    return Client(spec.url)


async def _key(keys: KeyMirror, headers: Mapping[str, str]) -> VirtualKey | None:
    scheme, _, secret = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret:
        return None
    key = await keys.authenticate(secret.strip())
    return key if key is not None and key.revoked_at is None else None


class _Authenticated:
    """401 before MCP sees a request without a valid key (the handlers re-check it)."""

    def __init__(self, app: StreamableHTTPASGIApp, keys: KeyMirror) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            if await _key(self.keys, headers) is None:
                error = GatewayError.bad_key()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": error.body()})
                return
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the gateway process owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield
