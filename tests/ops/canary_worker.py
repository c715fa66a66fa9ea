"""A worker whose success depends on its version, for the canary tests (run by a supervisor).

Version ``2`` fails three of every five tasks an instance handles (60 %); every other
version always succeeds. The failure is permanent (no retry): one task, one outcome.
"""

from __future__ import annotations

from pydantic import BaseModel

from shoal.agents import Agent, CapabilityManifest, PermanentTaskError, TaskContext

BAD_VERSION = "2"


class Job(BaseModel):
    n: int


def canary_agent() -> Agent:
    agent = Agent("worker", fleet="demo", version="1", manifest=CapabilityManifest())
    handled = [0]

    @agent.handler("job")
    async def job(ctx: TaskContext, task: Job) -> dict[str, int]:
        handled[0] += 1
        if ctx.identity.version == BAD_VERSION and handled[0] % 5 in (1, 2, 3):
            raise PermanentTaskError(f"version {BAD_VERSION} fails task {task.n}")
        return {"n": task.n}

    return agent
