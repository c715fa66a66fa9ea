"""An agent for supervised-instance gateway tests: each task asks ``offline-small`` once."""

from __future__ import annotations

from pydantic import BaseModel

from shoal.agents.agent import Agent
from shoal.agents.context import TaskContext
from shoal.schemas.manifest import CapabilityManifest


class ChatIn(BaseModel):
    text: str


class ChatOut(BaseModel):
    answer: str


def chat_agent() -> Agent:
    """Agent ``chatter``: may call ``offline-small`` and nothing else."""
    agent = Agent(
        "chatter", fleet="chat", version="1", manifest=CapabilityManifest(models=("offline-small",))
    )

    @agent.handler("chat")
    async def chat(ctx: TaskContext, task: ChatIn) -> ChatOut:
        answer = await ctx.model.complete(task.text, max_tokens=20)
        return ChatOut(answer=answer.text)

    return agent
