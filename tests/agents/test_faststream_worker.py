"""A FastStream worker (``@worker.subscriber``) completes a goal beside SDK agents, auth on.

The orchestrator is the SDK's; the only ``shout`` worker is a FastStream subscriber with
credentials of its own. The goal completes, every child session is the FastStream
instance's and priced by the core from its own table, and a kill of the instance ends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from shoal.agents import Agent, CapabilityManifest, TaskContext
from shoal.agents.faststream_worker import FastStreamWorker
from shoal.aggregates import open_core, run_core
from shoal.auth import InstanceScope, KeyStore
from shoal.auth.issuer import InstanceIssuer
from shoal.bus import Bus, ShoalSettings
from shoal.ops.connect import open_bus, resolve_url
from shoal.ops.kill import kill
from shoal.schemas import GoalCompleted, ModelCalled, TaskAssigned
from shoal.schemas.pricing import builtin_prices
from tests.agents.conftest import of_type, shout_goal
from tests.auth.conftest import local, secured, secured_dir  # noqa: F401

pytestmark = pytest.mark.timeout(90)


class Words(BaseModel):
    text: str


class Shouted(BaseModel):
    text: str
    words: int


@pytest.fixture
async def admin(local: ShoalSettings) -> AsyncIterator[Bus]:  # noqa: F811
    async with open_bus(local) as bus:
        yield bus


def own_settings(local: ShoalSettings, instance: str) -> ShoalSettings:  # noqa: F811
    """Settings connecting with credentials issued to this one instance."""
    scope = InstanceScope("wire", "fs-shouter", instance, ("shout",), ())
    creds = InstanceIssuer(KeyStore.for_data_dir(local.data_dir), local).issue(scope)
    return local.model_copy(update={"creds": creds, "nats_url": resolve_url(local, start=False)})


async def test_a_faststream_worker_completes_a_goal_beside_sdk_agents(
    admin: Bus,
    local: ShoalSettings,  # noqa: F811
) -> None:
    agent = Agent(
        "fs-shouter", fleet="wire", manifest=CapabilityManifest(models=("offline-small",))
    )
    worker = FastStreamWorker(agent, own_settings(local, "FS1"), instance="FS1", concurrency=2)

    @worker.subscriber("shout")
    async def shout(ctx: TaskContext, task: Words) -> Shouted:
        """Shout the text back, counting its words with the model."""
        answer = await ctx.model.complete(f"Count the words: {task.text}")
        return Shouted(text=task.text.upper(), words=len(answer.text.split()))

    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    try:
        async with asyncio.timeout(30):
            while worker.runtime is None or not worker.runtime._announced:
                assert not serving.done(), serving.exception()
                await asyncio.sleep(0.02)
        goal, events = await shout_goal(admin, ["quick fox", "lazy dog", "the end"])
        [done] = of_type(events, "goal.completed")
        assert isinstance(done.data, GoalCompleted)
        children = [e.iid for e in of_type(events, "task.assigned")]
        assert all(isinstance(e.data, TaskAssigned) for e in of_type(events, "task.assigned"))
        outputs = done.data.result["outputs"]
        assert sorted(o["text"] for o in outputs.values()) == ["LAZY DOG", "QUICK FOX", "THE END"]
        completed = of_type(events, "task.completed")
        assert (
            sorted((e.agent, e.instance, e.parentiid) for e in completed)
            == [("fs-shouter", "FS1", goal.iid)] * 3
        )

        # Everything the goal left on the log is believed.
        url = resolve_url(local, start=False)
        stats = await run_core(local, url, asyncio.Event(), until_idle=True)
        assert (stats.rejected, stats.dead_lettered) == (0, 0)

        # Its kill switch ends it, as it ends an SDK instance.
        await kill(admin, "instance", "FS1", by="tester", reason="test")
        assert await asyncio.wait_for(serving, 30) == "killed (instance.FS1) by tester: test"
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(serving), 30)

    calls = {
        e.iid: e.data
        for e in of_type(events, "model.called")
        if isinstance(e.data, ModelCalled) and e.iid in children
    }
    assert sorted(calls) == sorted(children)
    await run_core(local, url, asyncio.Event(), until_idle=True)  # the kill, too
    core = open_core(local)
    try:
        prices = builtin_prices()
        for iid in children:
            session, call = core.session(iid), calls[iid]
            assert session.status == "completed"
            assert session.cost_usd == prices.cost(
                call.model, call.input_tokens, call.output_tokens, call.cached_tokens
            )
            assert session.cost_usd == call.reported_cost_usd  # the offline client's estimate
        fs1 = core.instance("FS1")
        assert fs1 is not None and fs1.status == "killed"
    finally:
        core.close()
