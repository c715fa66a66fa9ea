"""Least privilege and attribution, tried as an attacker with a plain nats-py client.

Each test holds one instance's real credentials (as the supervisor mints them) and tries
what the issue's attacker did; the server's refusal is read from the client's error
callback, and what reached the streams and buckets is read back as the admin.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from shoal.auth import InstanceScope, KeyStore
from shoal.auth.issuer import InstanceIssuer
from shoal.bus import Bus, ShoalSettings
from shoal.bus.connectopts import private_inbox
from shoal.ops.connect import open_bus
from shoal.schemas import CloudEvent, ModelCalled

pytestmark = pytest.mark.timeout(60)


@dataclass
class Client:
    """A raw connection and the errors the server sent it."""

    nc: NATS
    errors: list[str] = field(default_factory=list)

    async def refused(self, subject: str, payload: bytes = b"{}") -> str:
        """Publish as a JetStream publish would; return the server's refusal text."""
        before = len(self.errors)
        with pytest.raises(nats.errors.TimeoutError):
            await self.nc.request(subject, payload, timeout=0.5)
        assert len(self.errors) == before + 1, self.errors
        return self.errors[-1]


async def raw(url: str, creds: Path) -> Client:
    client = Client(nc=NATS())

    async def on_error(e: Exception) -> None:
        client.errors.append(str(e))

    await client.nc.connect(
        url,
        user_credentials=str(creds),
        error_cb=on_error,
        allow_reconnect=False,
        inbox_prefix=private_inbox(creds) or "_INBOX",
    )
    return client


WORKER = InstanceScope("f1", "worker", "i1", ("summarize",), ())


@pytest.fixture
async def admin(local: ShoalSettings) -> AsyncIterator[Bus]:
    async with open_bus(local) as bus:
        yield bus


@pytest.fixture
async def worker(admin: Bus, local: ShoalSettings) -> AsyncIterator[Client]:
    path = InstanceIssuer(KeyStore.for_data_dir(local.data_dir), local).issue(WORKER)
    client = await raw(_url(local), path)
    yield client
    await client.nc.close()


def denied(subject: str) -> str:
    """The server's refusal as nats-py reports it (lower-cased)."""
    return f'nats: permissions violation for publish to "{subject.lower()}"'


def _url(settings: ShoalSettings) -> str:
    from shoal.ops.connect import resolve_url

    return resolve_url(settings, start=False)


def _model_called(source: str, fleet: str, agent: str, instance: str) -> CloudEvent:
    data = ModelCalled(
        call_id="c1",
        model="gpt-4o",
        provider="openai",
        input_tokens=10**9,
        output_tokens=0,
        latency_ms=1.0,
    )
    return CloudEvent.new(
        data, iid="S1", source=source, fleet=fleet, agent=agent, instance=instance
    )


async def test_an_instance_publishes_events_only_as_itself(admin: Bus, worker: Client) -> None:
    forged = _model_called("shoal://f1/worker/i2", "f1", "worker", "i2")
    subject = admin.event_subject(forged)
    assert subject.endswith(".model.called.agent.f1.worker.i2")
    text = await worker.refused(subject, forged.to_json())
    assert text == denied(subject)
    core = _model_called("shoal://core", "f1", "worker", "i1")
    assert await worker.refused(admin.event_subject(core)) == denied(admin.event_subject(core))
    own = _model_called("shoal://f1/worker/i1", "f1", "worker", "i1")
    ack = await worker.nc.jetstream().publish(admin.event_subject(own), own.to_json())
    stored = await admin.session_events("S1")
    assert [(s.seq, s.subject) for s in stored] == [(ack.seq, admin.event_subject(own))]


async def test_an_instance_cannot_write_the_kill_or_fleets_bucket(
    admin: Bus, worker: Client
) -> None:
    t = admin.topology
    for subject in (
        f"$KV.{t.kill.name}.all",
        f"$KV.{t.kill.name}.instance.i2",
        f"$KV.{t.fleets.name}.f1",
        f"$KV.{t.presence.name}.f1.worker.i2",
    ):
        assert await worker.refused(subject) == (denied(subject))
    for bucket in (t.kill.name, t.fleets.name, t.presence.name):
        assert (await admin.js.stream_info(f"KV_{bucket}")).state.messages == 0
    own = f"$KV.{t.presence.name}.f1.worker.i1"
    ack = await worker.nc.jetstream().publish(own, b'{"instance": "i1"}')
    assert (ack.stream, ack.seq) == (f"KV_{t.presence.name}", 1)


async def test_an_instance_cannot_call_admin_endpoints_or_any_query(
    admin: Bus, worker: Client
) -> None:
    for endpoint in ("export", "swap", "rebuild", "cost", "sql"):
        subject = admin.subjects.api("query", endpoint)
        assert await worker.refused(subject, b'{"dir": "/"}') == (denied(subject))


async def test_an_instance_pulls_only_its_fleets_consumers_of_its_capabilities(
    admin: Bus, worker: Client
) -> None:
    tasks = admin.topology.tasks.name
    for durable in ("f1_other", "f2_summarize"):
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{tasks}.{durable}"
        assert await worker.refused(subject, b'{"batch": 1}') == (denied(subject))
    for capability in ("summarize", "other"):  # its manifest delegates to nothing
        subject = admin.subjects.tasks("f1", capability)
        assert await worker.refused(subject) == (denied(subject))
    assert (await admin.js.stream_info(tasks)).state.messages == 0


async def test_the_core_dead_letters_an_event_whose_envelope_disagrees_with_its_subject(
    admin: Bus, local: ShoalSettings
) -> None:
    from shoal.aggregates import run_core

    # Published by the admin (which may publish any subject): only the core can catch it.
    lie = _model_called("shoal://core", "f1", "worker", "i1")
    subject = admin.subjects.event(None, "S1", "model.called", "agent.f1.worker.i1")
    await admin.js.publish(subject, lie.to_json(), headers={"Nats-Msg-Id": lie.id})
    stop = asyncio.Event()
    stats = await run_core(local, _url(local), stop, until_idle=True)
    assert (stats.applied, stats.dead_lettered) == (0, 1)
    deadletters = admin.topology.deadletter.name
    (dead,) = await admin.read(admin.subjects.all_deadletters, stream=deadletters)
    assert json.loads(dead.raw)["id"] == lie.id
    reason = (await admin.js.get_msg(deadletters, dead.seq)).headers or {}
    assert reason["Shoal-Reason"] == (
        "forged attribution: published as 'agent.f1.worker.i1' but claims source 'shoal://core'"
    )


async def test_no_instance_can_read_replies_meant_for_another(worker: Client) -> None:
    before = len(worker.errors)
    await worker.nc.subscribe("_INBOX.>")
    await worker.nc.flush()
    for _ in range(50):
        if len(worker.errors) > before:
            break
        await asyncio.sleep(0.02)
    assert worker.errors[before:] == ['nats: permissions violation for subscription to "_inbox.>"']


async def test_neither_an_instance_nor_a_viewer_can_delete_or_purge_a_kill_switch(
    admin: Bus, worker: Client, local: ShoalSettings
) -> None:
    from tests.auth.test_operators import add

    t = admin.topology
    kv = await admin.kv(t.kill.name)
    await kv.put("all", b'{"by": "tester"}')
    viewer = await raw(_url(local), await add(local, "vic", "viewer"))
    stream = f"KV_{t.kill.name}"
    attempts = [
        (f"$KV.{t.kill.name}.all", b""),  # a KV delete is a publish with KV-Operation: DEL
        (f"$JS.API.STREAM.PURGE.{stream}", b'{"filter": "$KV.%s.all"}' % t.kill.name.encode()),
        (f"$JS.API.STREAM.MSG.DELETE.{stream}", b'{"seq": 1}'),
        (f"$JS.API.STREAM.DELETE.{stream}", b""),
    ]
    for client in (worker, viewer):
        for subject, body in attempts:
            assert await client.refused(subject, body) == denied(subject)
    entry = await kv.get("all")
    assert (entry.revision, entry.value) == (1, b'{"by": "tester"}')
    assert (await admin.js.stream_info(stream)).state.messages == 1
    await viewer.nc.close()


async def test_a_viewer_cannot_touch_the_partitioned_cores_consumers(
    admin: Bus, local: ShoalSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.auth.test_operators import add

    monkeypatch.setenv("SHOAL_CORE_PARTITIONS", "2")  # minted where the core runs 2 partitions
    viewer = await raw(_url(local), await add(local, "pat", "viewer"))
    stream = f"{admin.topology.events.name}_P2"
    attempts = [
        f"$JS.API.CONSUMER.DELETE.{stream}.core-p0of2",
        f"$JS.API.CONSUMER.CREATE.{stream}.core-p0of2.x",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.core-p0of2",
    ]
    for subject in attempts:
        assert await viewer.refused(subject) == denied(subject)
    # The log itself stays readable to a viewer, as before.
    ok = f"$JS.API.STREAM.INFO.{admin.topology.events.name}"
    reply = await viewer.nc.request(ok, b"", timeout=5)
    assert json.loads(reply.data)["config"]["name"] == admin.topology.events.name
    await viewer.nc.close()
