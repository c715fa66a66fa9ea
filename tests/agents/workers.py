"""Agents used by the tests, importable by ``shoal agent run --target`` in a subprocess."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from shoal.agents import Agent, CapabilityManifest, TaskContext


class CountIn(BaseModel):
    n: int
    sleep_ms: int = 0


class CountOut(BaseModel):
    n: int
    instance: str


def counter_agent() -> Agent:
    """Echoes ``n`` back with the instance that handled it (after ``sleep_ms``)."""
    agent = Agent("counter", fleet="load", version="1", manifest=CapabilityManifest())

    @agent.handler("count")
    async def count(ctx: TaskContext, task: CountIn) -> CountOut:
        if task.sleep_ms:
            await asyncio.sleep(task.sleep_ms / 1000)
        return CountOut(n=task.n, instance=ctx.identity.instance)

    return agent


def asker_agent() -> Agent:
    """Asks a person which region to use, then answers with the reply."""
    agent = Agent("asker", fleet="talk", version="1", manifest=CapabilityManifest())

    @agent.handler("choose")
    async def choose(ctx: TaskContext, task: dict[str, str]) -> dict[str, str]:
        region = await ctx.ask(f"Which region for {task['what']}?", timeout=60)
        return {"region": region, "instance": ctx.identity.instance}

    return agent
