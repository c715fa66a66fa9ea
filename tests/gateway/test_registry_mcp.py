"""``shoal registry register --gateway-config``: the gateway's MCP servers and the tools each
lists, with their schemas, from a real MCP server over stdio."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shoal.bus import ShoalSettings
from shoal.ops.registry import open_registry_app

ROOT = Path(__file__).resolve().parents[2]


async def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a process: the MCP stdio client hands the server a real stderr."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shoal", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


pytestmark = pytest.mark.timeout(120)


async def test_the_gateways_mcp_servers_and_their_tools_are_registered_with_schemas(
    settings: ShoalSettings, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    server = {"command": [sys.executable, "-m", "tests.gateway.mcp_tools"], "env": {"TOKEN": "s3"}}
    config.write_text(yaml.safe_dump({"mcp_servers": {"tools": server}}))
    assert settings.nats_url
    args = ["--nats-url", settings.nats_url, "--prefix", settings.prefix]
    args += ["--data-dir", str(settings.data_dir), "--json"]
    result = await shoal(
        *args, "registry", "register", "--gateway-config", str(config), "-r", "import"
    )
    assert result.returncode == 0, result.stderr
    outcomes = [(r["kind"], r["name"], r["outcome"]) for r in json.loads(result.stdout)]
    assert outcomes == [
        ("tool", "tools", "added"),
        ("tool", "add", "added"),
        ("tool", "send_email", "added"),
        ("tool", "delete_everything", "added"),
    ]
    reg = open_registry_app(settings)
    try:
        mcp = reg.get("tool", "tools")
        [entry] = mcp.versions.values()
        assert entry.content["kind"] == "mcp-server"
        assert entry.content["server"] == {"command": server["command"], "env": ["TOKEN"]}
        add = reg.get("tool", "add")
        assert add.purpose == "Add two numbers."
        [add_entry] = add.versions.values()
        assert add_entry.version == entry.version  # the server's own version
        schema = add_entry.content["input_schema"]
        assert (schema["required"], sorted(schema["properties"])) == (["a", "b"], ["a", "b"])
        assert add_entry.content["server"] == {"mcp_server": "tools"}
    finally:
        reg.close()
    again = await shoal(*args, "registry", "register", "--gateway-config", str(config))
    assert [r["outcome"] for r in json.loads(again.stdout)] == ["unchanged"] * 4
