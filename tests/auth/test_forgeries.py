"""Every forgery of the issue, tried by one fleet instance holding its own real credentials.

A legitimate instance reports one model call (gpt-4o, 1,000 in / 100 out: $0.0035). A
second instance of the same fleet, a compromised agent, then tries what the attacker did:
charge $20.00 to the first one's session, speak as the core and as ``cli/root``, register a
fake instance, report a ``pr_merged`` outcome, set kill switches, rewrite desired state,
swap the projection and export anywhere. The server refuses each; the core then ingests
the log and the query service answers only the legitimate $0.0035.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from shoal.aggregates import run_core
from shoal.auth import InstanceScope, KeyStore
from shoal.auth.issuer import InstanceIssuer
from shoal.bus import Bus, ShoalSettings
from shoal.ops.connect import open_bus, resolve_url
from shoal.projections.client import QueryClient
from shoal.projections.queries import CostAnswer
from shoal.projections.service import serving
from shoal.schemas import (
    AgentStarted,
    CloudEvent,
    EventData,
    GoalCompleted,
    ModelCalled,
    OutcomeReported,
)
from tests.auth.test_principals import Client, denied, raw

pytestmark = pytest.mark.timeout(90)


def as_agent(data: EventData, instance: str, iid: str, source: str = "") -> CloudEvent:
    return CloudEvent.new(
        data,
        iid=iid,
        source=source or f"shoal://f1/worker/{instance}",
        fleet="f1",
        agent="worker",
        instance=instance,
    )


def call(tokens: int, output: int) -> ModelCalled:
    return ModelCalled(
        call_id=f"c{tokens}",
        model="gpt-4o",
        provider="openai",
        input_tokens=tokens,
        output_tokens=output,
        latency_ms=5.0,
        reported_cost_usd=Decimal("0"),
    )


async def connect(settings: ShoalSettings, instance: str) -> Client:
    scope = InstanceScope("f1", "worker", instance, ("summarize",), ())
    path = InstanceIssuer(KeyStore.for_data_dir(settings.data_dir), settings).issue(scope)
    return await raw(resolve_url(settings, start=False), path)


async def only_the_honest_call_is_answered(admin: Bus, local: ShoalSettings) -> None:
    """``shoal cost`` answers the one honest call (1,000 in / 100 out: $0.0035), nothing forged."""
    async with serving(local, admin.nc):
        answer = await QueryClient(admin.nc, local).query(
            "cost", {"by": ["agent", "model"]}, fresh=True
        )
    assert isinstance(answer, CostAnswer)
    assert [(r.key, r.calls, r.input_tokens, r.cost_usd) for r in answer.rows] == [
        (["worker", "gpt-4o"], 1, 1000, Decimal("0.0035"))
    ]
    assert answer.total_usd == Decimal("0.0035")


@pytest.fixture
async def admin(local: ShoalSettings) -> AsyncIterator[Bus]:
    async with open_bus(local) as bus:
        yield bus


async def test_every_forgery_is_refused_and_no_forged_amount_is_answered(
    admin: Bus, local: ShoalSettings
) -> None:
    honest, evil = await connect(local, "i1"), await connect(local, "evil")
    hjs = honest.nc.jetstream()
    for ev in (
        as_agent(AgentStarted(version="1", capabilities=["summarize"]), "i1", "i1"),
        as_agent(call(1000, 100), "i1", "S1"),
    ):
        await hjs.publish(admin.event_subject(ev), ev.to_json(), headers={"Nats-Msg-Id": ev.id})

    t, s = admin.topology, admin.subjects
    forgeries = [
        as_agent(call(8_000_000, 0), "i1", "S1"),  # $20.00 charged to a live instance
        as_agent(call(41_000_000, 0), "i1", "S1", source="shoal://core"),
        as_agent(AgentStarted(version="1", capabilities=["x"]), "ghost", "ghost"),
        CloudEvent.new(
            GoalCompleted(summary="done"),
            iid="G1",
            gid="G1",
            source="shoal://cli/root",
            principal="root",
        ),
        as_agent(OutcomeReported(outcome="success", signal="pr_merged"), "evil", "S1"),
    ]
    subjects = [admin.event_subject(ev) for ev in forgeries] + [
        f"$KV.{t.kill.name}.all",
        f"$KV.{t.fleets.name}.f1",
        s.api("query", "swap"),
        s.api("query", "export"),
    ]
    refusals = [await evil.refused(subject) for subject in subjects]
    assert refusals == [denied(subject) for subject in subjects]

    stats = await run_core(local, resolve_url(local, start=False), asyncio.Event(), until_idle=True)
    assert (stats.messages, stats.applied, stats.rejected, stats.dead_lettered) == (2, 2, 0, 0)
    await only_the_honest_call_is_answered(admin, local)
    await honest.nc.close()
    await evil.nc.close()


async def test_an_operator_cannot_charge_an_instance_or_register_one(
    admin: Bus, local: ShoalSettings
) -> None:
    """An operator publishes events as itself (the server allows ``…cli.otto``), but what an
    instance reports about its own work — its start, its model and tool calls — is believed
    only from that instance (or a gateway): claimed by ``shoal://cli/otto`` it is refused."""
    from tests.auth.test_operators import add

    honest = await connect(local, "i1")
    for ev in (
        as_agent(AgentStarted(version="1", capabilities=["summarize"]), "i1", "i1"),
        as_agent(call(1000, 100), "i1", "S1"),
    ):
        await honest.nc.jetstream().publish(admin.event_subject(ev), ev.to_json())
    otto = await raw(resolve_url(local, start=False), await add(local, "otto", "operator"))
    forged = [
        as_agent(call(8_000_000, 0), "i1", "S1", source="shoal://cli/otto"),
        as_agent(
            AgentStarted(version="1", capabilities=["x"]), "ghost", "ghost", "shoal://cli/otto"
        ),
    ]
    for ev in forged:
        subject = admin.event_subject(ev)
        assert subject.endswith(".cli.otto")
        await otto.nc.jetstream().publish(subject, ev.to_json())  # the server lets it through
    stats = await run_core(local, resolve_url(local, start=False), asyncio.Event(), until_idle=True)
    # Both refused; the ghost's start has no session to be recorded on: dead-lettered too.
    assert (stats.messages, stats.applied, stats.rejected, stats.dead_lettered) == (4, 2, 2, 1)
    deadletters = admin.topology.deadletter.name
    (dead,) = await admin.read(admin.subjects.all_deadletters, stream=deadletters)
    reason = (await admin.js.get_msg(deadletters, dead.seq)).headers or {}
    assert reason["Shoal-Reason"] == (
        "refused: shoal.agent.started is reported by an instance or a gateway, "
        "not by 'shoal://cli/otto'"
    )
    await only_the_honest_call_is_answered(admin, local)
    await honest.nc.close()
    await otto.nc.close()
