"""Consumers as an attack surface, tried with a plain nats-py client holding real credentials.

The JetStream API lets whoever may create a consumer by name also *update* it: a new filter
is applied to the existing durable. Two attacks follow, and each is shut here: an instance
pointing its own fleet's durable at another fleet's tasks (the server refuses every create
form but the one whose filter it checks), and any reader re-pointing the core's consumer so
that it ingests nothing (the core notices and re-attaches at its store's position).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from nats.js.errors import NotFoundError

from shoal.aggregates import run_core
from shoal.auth import InstanceScope, KeyStore
from shoal.auth.issuer import InstanceIssuer
from shoal.bus import Bus, ShoalSettings
from shoal.ops.connect import open_bus, resolve_url
from shoal.schemas import AgentStarted
from tests.auth.test_forgeries import as_agent, call
from tests.auth.test_operators import add
from tests.auth.test_principals import Client, denied, raw

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def admin(local: ShoalSettings) -> AsyncIterator[Bus]:
    async with open_bus(local) as bus:
        yield bus


async def instance(settings: ShoalSettings, name: str) -> Client:
    scope = InstanceScope("f1", "worker", name, ("summarize",), ())
    path = InstanceIssuer(KeyStore.for_data_dir(settings.data_dir), settings).issue(scope)
    return await raw(resolve_url(settings, start=False), path)


def create(stream: str, name: str, filter_subject: str, *, durable: bool = True) -> bytes:
    config = {"name": name, "filter_subject": filter_subject, "ack_policy": "explicit"}
    if durable:
        config["durable_name"] = name
    return json.dumps({"stream_name": stream, "config": config}).encode()


async def test_an_instance_cannot_point_its_durable_at_another_fleets_tasks(
    admin: Bus, local: ShoalSettings
) -> None:
    evil = await instance(local, "evil")
    tasks, s = admin.topology.tasks.name, admin.subjects
    foreign, own = s.tasks("f2", "secret"), s.tasks("f1", "summarize")
    await admin.js.publish(foreign, b'{"secret": true}')
    api_ = "$JS.API.CONSUMER"
    attempts = [
        f"{api_}.DURABLE.CREATE.{tasks}.f1_summarize",  # nats-py's form for durable_name only
        f"{api_}.CREATE.{tasks}.f1_summarize",  # the filter only in the body
        f"{api_}.CREATE.{tasks}.f1_summarize.{foreign}",
    ]
    for subject in attempts:
        assert await evil.refused(subject, create(tasks, "f1_summarize", foreign)) == denied(
            subject
        )
    with pytest.raises(NotFoundError):
        await admin.js.consumer_info(tasks, "f1_summarize")
    # The one form allowed: its own durable, its own capability's subject, checked by the
    # server against the config (a different body filter is refused by JetStream itself).
    mismatch = await evil.nc.request(
        f"{api_}.CREATE.{tasks}.f1_summarize.{own}",
        create(tasks, "f1_summarize", foreign),
        timeout=2,
    )
    assert json.loads(mismatch.data)["error"]["err_code"] == 10131
    ok = await evil.nc.request(
        f"{api_}.CREATE.{tasks}.f1_summarize.{own}", create(tasks, "f1_summarize", own), timeout=2
    )
    assert json.loads(ok.data)["config"]["filter_subject"] == own
    info = await admin.js.stream_info(tasks)
    assert (info.state.messages, info.state.consumer_count) == (1, 1)
    await evil.nc.close()


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_only_account_holders_call_the_endpoints_that_act_for_a_named_principal(
    admin: Bus, local: ShoalSettings, role: str
) -> None:
    creds = await add(local, f"{role[:4]}1", role)
    client = await raw(resolve_url(local, start=False), creds)
    bodies = {
        "send": {"iid": "S1", "text": "rm -rf", "by": "root"},
        "reply": {"iid": "S1", "text": "yes", "by": "root"},
        "decide": {"approval": "a1", "grant": True, "by": "root"},
    }
    for endpoint, body in bodies.items():
        subject = admin.subjects.api("interactions", endpoint)
        assert await client.refused(subject, json.dumps(body).encode()) == denied(subject)
    await client.nc.close()


async def test_the_core_reattaches_when_another_client_replaces_its_consumer(
    admin: Bus, local: ShoalSettings
) -> None:
    honest, evil = await instance(local, "i1"), await instance(local, "evil")
    events = admin.topology.events.name
    url = resolve_url(local, start=False)
    stop = asyncio.Event()
    core = asyncio.create_task(run_core(local, url, stop))
    first = as_agent(AgentStarted(version="1", capabilities=["summarize"]), "i1", "i1")
    await honest.nc.jetstream().publish(admin.event_subject(first), first.to_json())
    await until(lambda: acked(admin, events, 1))
    # A reader may read the core's consumer and create consumers on the log by name: it
    # copies the config and re-points the filter to nothing.
    seen = await evil.nc.request(f"$JS.API.CONSUMER.INFO.{events}.core", b"", timeout=2)
    config = json.loads(seen.data)["config"]
    nothing = config["filter_subject"] = f"{local.prefix}.events.none"
    reply = await evil.nc.request(
        f"$JS.API.CONSUMER.CREATE.{events}.core.{nothing}",
        json.dumps({"stream_name": events, "config": config}).encode(),
        timeout=2,
    )
    assert json.loads(reply.data)["config"]["filter_subject"] == nothing
    second = as_agent(call(1000, 100), "i1", "S1")
    ack = await honest.nc.jetstream().publish(admin.event_subject(second), second.to_json())
    await until(lambda: acked(admin, events, ack.seq))
    stop.set()
    stats = await asyncio.wait_for(core, 30)
    info = await admin.js.consumer_info(events, "core")
    assert (info.config.filter_subject, info.config.durable_name) == (
        admin.subjects.all_events,
        "core",
    )
    assert (stats.applied, stats.rejected, stats.failures) == (2, 0, 1)
    await honest.nc.close()
    await evil.nc.close()


async def acked(bus: Bus, stream: str, seq: int) -> bool:
    try:
        info = await bus.js.consumer_info(stream, "core")
    except Exception:
        return False
    own = info.config.filter_subject == bus.subjects.all_events
    return own and info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq


async def until(check: object, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")
