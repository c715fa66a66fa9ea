"""A real MCP server (the SDK's MCPServer, formerly FastMCP) over stdio, for the gateway tests."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("test-tools")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@server.tool()
def send_email(to: str, body: str) -> str:
    """Pretend to send an email."""
    return f"sent {len(body)} chars to {to}"


@server.tool()
def delete_everything() -> str:
    """A tool no test agent is granted."""
    return "deleted"


if __name__ == "__main__":
    server.run("stdio")
