"""A fleet spec's ``budget_usd`` is the cap the core enforces: a real core, a real nats-server,
the fleet applied through the same library call as ``shoal fleet apply``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.aggregates import open_core, run_core
from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus, KillSwitch, ShoalSettings, kill_key
from shoal.ops.fleets import apply_fleet, open_fleet_app
from shoal.schemas import BudgetExceeded
from shoal.schemas.fleet import parse_fleet_spec
from tests.aggregates.eventmix import Mix, publish_all
from tests.aggregates.test_ingestion import wait_for_position

pytestmark = pytest.mark.timeout(120)


def docs_spec(budget: str | None) -> str:
    line = f'budget_usd: "{budget}"\n' if budget is not None else ""
    return f"fleet: docs\n{line}agents:\n  - {{name: summarizer, target: 'm:a'}}\n"


@pytest.fixture
def capped(settings: ShoalSettings, tmp_path: Path) -> ShoalSettings:
    # $1 per million tokens, and a price-table cap the spec's must override.
    table = tmp_path / "prices.yaml"
    table.write_text(
        'models:\n  offline-small: {input: "1", output: "1"}\nfleet_budgets:\n  docs: "100"\n'
    )
    return settings.model_copy(update={"price_table": table})


@pytest.fixture
async def fleets(settings: ShoalSettings) -> AsyncIterator[FleetApplication]:
    application = open_fleet_app(settings)
    yield application
    application.close()


async def crossings(bus: Bus) -> list[tuple[str, str, str, str]]:
    published = await bus.read(bus.subjects.events_of_type("budget.exceeded"))
    out = []
    for s in published:
        assert s.event is not None and isinstance(s.event.data, BudgetExceeded)
        d = s.event.data
        out.append((s.event.iid, d.key, str(d.budget_usd), str(d.spent_usd)))
    return out


async def fleet_switch(bus: Bus) -> KillSwitch:
    entry = await (await bus.kv(bus.topology.kill.name)).get(kill_key("fleet", "docs"))
    assert entry.value is not None
    return KillSwitch.model_validate_json(entry.value)


async def test_a_fleet_over_its_specs_budget_is_stopped_once_whatever_the_price_table_says(
    bus: Bus, capped: ShoalSettings, fleets: FleetApplication
) -> None:
    await apply_fleet(bus, fleets, parse_fleet_spec(docs_spec("2.5")), by="alice")
    mix = Mix(seed=31)
    mix.start_agents()
    for n in range(4):  # $1 each: the third call crosses the spec's $2.5 (the table says $100)
        mix.model_call(f"s-{n}", None, mix.worker, input_tokens=1_000_000, output_tokens=0)
    await publish_all(bus, mix.events)

    assert capped.nats_url
    await asyncio.wait_for(run_core(capped, capped.nats_url, asyncio.Event(), until_idle=True), 60)

    app = open_core(capped)
    try:
        spend = app.fleet_spend("docs")
        assert spend is not None and spend.budget_exceeded
        assert spend.crossings == [{"budget_usd": "2.5", "spent_usd": "3"}]
    finally:
        app.close()
    assert await crossings(bus) == [("s-2", "docs", "2.5", "3")]
    switch = await fleet_switch(bus)
    assert (switch.scope, switch.name) == ("fleet", "docs")
    assert switch.reason == "budget $2.5 exceeded: spent $3"


async def test_a_budget_applied_while_the_core_runs_is_enforced_from_the_next_call(
    bus: Bus, capped: ShoalSettings, fleets: FleetApplication
) -> None:
    await apply_fleet(bus, fleets, parse_fleet_spec(docs_spec(None)), by="alice")
    mix = Mix(seed=32)
    mix.start_agents()
    for n in range(3):
        mix.model_call(f"s-{n}", None, mix.worker, input_tokens=1_000_000, output_tokens=0)
    first = len(mix.events)
    stop = asyncio.Event()
    assert capped.nats_url
    core = asyncio.create_task(run_core(capped, capped.nats_url, stop))
    try:
        await publish_all(bus, mix.events)
        await wait_for_position(capped, first)
        assert await crossings(bus) == []  # $3 spent: under the table's $100, no spec cap

        await apply_fleet(bus, fleets, parse_fleet_spec(docs_spec("3.5")), by="alice")
        await asyncio.sleep(1.0)  # the core's watch of the fleets bucket delivers the cap (~ms)
        mix.model_call("s-3", None, mix.worker, input_tokens=1_000_000, output_tokens=0)
        await publish_all(bus, mix.events[first:])
        await wait_for_position(capped, len(mix.events))
    finally:
        stop.set()
        await asyncio.wait_for(core, 30)
    assert await crossings(bus) == [("s-3", "docs", "3.5", "4")]
    assert (await fleet_switch(bus)).reason == "budget $3.5 exceeded: spent $4"
