"""A probe agent for kill-switch tests: each task calls the tool it names and reports
whether the gateway let it through."""

from __future__ import annotations

from pydantic import BaseModel

from shoal.agents.agent import Agent
from shoal.agents.context import TaskContext
from shoal.agents.errors import PolicyDenied
from shoal.agents.fstools import list_files, read_file
from shoal.schemas.manifest import CapabilityManifest, ToolGrant


class ProbeIn(BaseModel):
    tool: str


class ProbeOut(BaseModel):
    tool: str
    result: str


def probe_agent() -> Agent:
    """Agent ``probe`` with two tools, ``read_file`` and ``list_files``."""
    manifest = CapabilityManifest(
        tools={"read_file": ToolGrant(), "list_files": ToolGrant(sensitivity="public")}
    )
    agent = Agent(
        "probe", fleet="probe", version="1", manifest=manifest, tools=[read_file, list_files]
    )

    @agent.handler("probe")
    async def probe(ctx: TaskContext, task: ProbeIn) -> ProbeOut:
        try:
            if task.tool == "read_file":
                await ctx.tools.call("read_file", path="a.md")
            else:
                await ctx.tools.call("list_files")
        except PolicyDenied as e:
            return ProbeOut(tool=task.tool, result=f"refused:{e.rule}")
        return ProbeOut(tool=task.tool, result="ok")

    return agent
