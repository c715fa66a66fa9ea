"""A goal's budget stops busy instances within one in-flight call each, under load.

Four instances spend on one goal as fast as they can while the core ingests a steady flow of
other work (100 and 1,000 events/s). Each call is reserved at the gateway against the goal's
budget before it is forwarded (the budget travels from ``goal.submitted`` down to every task
and is stated on every call), so what runs past the budget is bounded by the calls already in
flight: at most one per instance. Before, the only stop was the core's kill after it folded
the crossing: 36-169 calls ran past the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal
from typing import Any

import pytest

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext
from shoal.agents.errors import BudgetExhausted, Killed
from shoal.agents.runtime import default_model_clients
from shoal.aggregates import open_core, run_core
from shoal.bus import Bus, ShoalSettings
from shoal.gateway import run_gateway
from shoal.gateway.offline import OfflineUpstream
from shoal.schemas import CloudEvent, GoalSubmitted, ModelCalled, TaskAssigned, new_id
from shoal.schemas.pricing import PriceTable
from tests.aggregates.eventmix import Mix
from tests.gateway.conftest import MakeKey, offline_small

pytestmark = pytest.mark.timeout(180)

INSTANCES = 4
BUDGET = Decimal("0.0016")  # about 800 calls of $0.000002: a few seconds of spending


async def _load(bus: Bus, rate: int, stop: asyncio.Event) -> int:
    """Other fleets' work at ``rate`` events/s until ``stop``; how many were published."""
    mix = Mix(seed=rate, fleet="other").until(rate * 60)
    step, sent, started = max(1, rate // 20), 0, time.monotonic()
    while not stop.is_set() and sent + step <= len(mix.events):
        await bus.publish_many(mix.events[sent : sent + step])
        sent += step
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    return sent


@pytest.mark.parametrize("rate", [100, 1000])
async def test_a_goal_budget_stops_four_busy_instances_within_one_call_each(
    rate: int,
    bus: Bus,
    settings: ShoalSettings,
    make_key: MakeKey,
    upstream: tuple[str, OfflineUpstream],
) -> None:
    config = offline_small(upstream[0])
    manifest = CapabilityManifest(models=("offline-small",))
    ended: dict[str, str] = {}
    agent = Agent("worker", fleet="busy", manifest=manifest)

    @agent.handler("spend")
    async def spend(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        calls = 0
        while True:
            try:
                # A new prompt each time: the gateway's cache would answer a repeat for free.
                await ctx.model.complete(f"spend {calls}", max_tokens=8)
            except (BudgetExhausted, Killed) as e:
                ended[ctx.model.session.iid] = f"{type(e).__name__} after {calls} calls"
                return {"calls": calls}
            except asyncio.CancelledError:  # the core's kill of the goal cancels the handler
                ended[ctx.model.session.iid] = f"cancelled after {calls} calls"
                raise
            calls += 1

    gid = new_id()
    goal = CloudEvent.new(
        GoalSubmitted(fleet="busy", text="spend it", budget_usd=BUDGET),
        iid=gid,
        gid=gid,
        principal="tester",
        source="shoal://cli/tester",
    )
    stop_core, stop_load = asyncio.Event(), asyncio.Event()
    assert settings.nats_url
    core = asyncio.create_task(run_core(settings, settings.nats_url, stop_core))
    load = asyncio.create_task(_load(bus, rate, stop_load))
    async with contextlib.AsyncExitStack() as stack:
        gw = await stack.enter_async_context(run_gateway(bus, config))
        for i in range(INSTANCES):
            instance = f"busy-{i}"
            _, secret = await make_key(
                fleet="busy", agent="worker", instance=instance, manifest=manifest
            )
            through = settings.model_copy(update={"gateway_url": gw.url, "gateway_key": secret})
            runtime = AgentRuntime(
                bus, agent, instance=instance, model_clients=default_model_clients(through)
            )
            await stack.enter_async_context(runtime.running())
        await bus.publish(goal)
        tasks = []
        for _ in range(INSTANCES):
            task = CloudEvent.new(
                TaskAssigned(capability="spend", goal_budget_usd=BUDGET),
                iid=new_id(),
                gid=gid,
                parentiid=gid,
                principal="tester",
                source="shoal://cli/tester",
            )
            await bus.record(task, bus.subjects.tasks("busy", "spend"))
            tasks.append(task.iid)
        deadline = time.monotonic() + 120
        while len(ended) < INSTANCES and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await gw.model.drain()
    stop_load.set()
    published = await load
    # Let the core fold what the gateway recorded, then read its store.
    called = [
        s.event
        for s in await bus.goal_events(gid)
        if s.event is not None and isinstance(s.event.data, ModelCalled)
    ]
    await asyncio.sleep(1.0)
    stop_core.set()
    await asyncio.wait_for(core, 30)

    assert published >= rate  # the core was under load for at least a second
    prices = PriceTable.load()
    costs = [
        prices.cost(e.data.model, e.data.input_tokens, e.data.output_tokens, e.data.cached_tokens)
        for e in called
        if isinstance(e.data, ModelCalled)
    ]
    running, past_budget = Decimal(0), 0
    for cost in costs:  # in log order: the calls that ran once the budget was crossed
        if running > BUDGET:
            past_budget += 1
        running += cost
    assert past_budget <= INSTANCES
    # Refused by the gateway's reservation, before the core ever saw the budget crossed.
    assert sorted(ended) == sorted(tasks), ended
    assert all(why.startswith("BudgetExhausted") for why in ended.values()), ended
    assert all(e.source.startswith("shoal://gateway/") for e in called)
    app = open_core(settings)
    try:
        counted = sum((app.session(iid).cost_usd for iid in tasks), Decimal(0))
    finally:
        app.close()
    assert counted == running  # every recorded call counted once, at the server's price
    # It spent up to the budget, not far short of it: only in-flight holds are left over.
    assert BUDGET - Decimal("0.0001") < counted <= BUDGET + INSTANCES * max(costs)
