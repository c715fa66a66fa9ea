"""Agents used by the tests, importable by ``shoal agent run --target`` in a subprocess."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from shoal.agents import Agent, CapabilityManifest, TaskContext
from shoal.agents.models import ChatRequest, Completion


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


def dies_after_completing_agent() -> Agent:
    """Fails its first two attempts; on the last one it reports ``task.completed`` and its
    process is SIGKILLed at once, before the runtime acks the task (a real crash, placed
    exactly: right after the completion's publish ack, in the instance's own process)."""
    import os
    import signal

    from shoal.bus import Bus
    from shoal.schemas import TaskCompleted

    publish = Bus.publish

    async def publish_then_die(self: Bus, event: Any, *args: Any, **kwargs: Any) -> Any:
        ack = await publish(self, event, *args, **kwargs)
        data = event.data
        if isinstance(data, TaskCompleted) and data.attempt >= self.settings.task_max_deliver:
            os.kill(os.getpid(), signal.SIGKILL)
        return ack

    Bus.publish = publish_then_die  # type: ignore[method-assign]
    agent = Agent("dier", fleet="load", version="1", manifest=CapabilityManifest())

    @agent.handler("count")
    async def count(ctx: TaskContext, task: CountIn) -> CountOut:
        if ctx.attempt < ctx.settings.task_max_deliver:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
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


def sleepy_agent() -> Agent:
    """The first attempt of a task sleeps ``sleep_ms``; a later attempt answers at once."""
    agent = Agent("sleepy", fleet="load", version="1", manifest=CapabilityManifest())

    @agent.handler("count")
    async def count(ctx: TaskContext, task: CountIn) -> CountOut:
        if ctx.attempt == 1:
            await asyncio.sleep(task.sleep_ms / 1000)
        return CountOut(n=task.n, instance=ctx.identity.instance)

    return agent


def one_task_orchestrator() -> Agent:
    """An orchestrator of fleet ``load`` whose plan is one ``count`` task (no model call)."""
    from shoal.agents.orchestrator import orchestrator
    from shoal.schemas import GoalSubmitted, PlannedTask, new_id

    async def planner(ctx: TaskContext, goal: GoalSubmitted) -> list[PlannedTask]:
        return [PlannedTask(iid=new_id(), capability="count", input={"n": 7})]

    manifest = CapabilityManifest(delegates=("count",))
    return orchestrator("load", planner=planner, manifest=manifest, task_timeout_s=60)


def mailer_agent() -> Agent:
    """Sends one email per task; the manifest says sending needs a human's approval."""
    import json

    from shoal.agents.tools import ToolEnv, tool

    @tool("send_email", side_effects=("email",))
    async def send_email(env: ToolEnv, to: str, body: str) -> str:
        with (env.settings.data_dir / "sent.jsonl").open("a") as out:
            out.write(json.dumps({"to": to, "body": body}) + "\n")
        return "sent"

    manifest = CapabilityManifest.model_validate(
        {
            "tools": {"send_email": {"sensitivity": "internal"}},
            "requires_approval": ["tool.send_email"],
        }
    )
    agent = Agent("mailer", fleet="mail", version="1", manifest=manifest, tools=[send_email])

    @agent.handler("mail")
    async def mail(ctx: TaskContext, task: dict[str, str]) -> dict[str, str]:
        return {"result": await ctx.tools.call("send_email", to=task["to"], body=task["body"])}

    return agent


@dataclass
class CountingModel:
    """A model endpoint stand-in that counts the calls it receives and the ones it answers."""

    provider: str = "counting"
    latency_s: float = 0.002
    received: int = 0
    answered: int = 0

    def serves(self, model: str) -> bool:
        return model == "offline-small"

    async def complete(self, request: ChatRequest) -> Completion:
        self.received += 1
        await asyncio.sleep(self.latency_s)
        self.answered += 1
        return Completion("ok", request.model, self.provider, 3, 1, cost_usd=Decimal(0))

    async def aclose(self) -> None:
        return None
