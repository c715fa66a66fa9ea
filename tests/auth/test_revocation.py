"""A kill also revokes: the server disconnects the killed and refuses them, after restarts too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from shoal.auth import InstanceScope, KeyStore
from shoal.auth.issuer import InstanceIssuer
from shoal.bus import Bus, ShoalSettings
from shoal.bus.connectopts import private_inbox
from shoal.ops.auth import run_warden
from shoal.ops.connect import open_bus, resolve_url
from shoal.ops.kill import kill
from shoal.ops.server import EmbeddedServer

pytestmark = pytest.mark.timeout(60)


class Instance:
    """A raw connection holding one instance's credentials; ``closed`` once the server ends it."""

    def __init__(self, creds: Path) -> None:
        self.creds = creds
        self.nc = NATS()
        self.closed = asyncio.Event()

    async def connect(self, url: str) -> Instance:
        async def on_closed() -> None:
            self.closed.set()

        async def quiet(_: Exception) -> None:
            return None

        await self.nc.connect(
            url,
            user_credentials=str(self.creds),
            closed_cb=on_closed,
            error_cb=quiet,
            max_reconnect_attempts=3,
            inbox_prefix=private_inbox(self.creds) or "_INBOX",
            reconnect_time_wait=0.05,  # type: ignore[arg-type]
        )
        return self


def issue(settings: ShoalSettings, fleet: str, instance: str) -> Path:
    scope = InstanceScope(fleet, "worker", instance, ("summarize",), ())
    return InstanceIssuer(KeyStore.for_data_dir(settings.data_dir), settings).issue(scope)


async def refused(url: str, creds: Path) -> str:
    with pytest.raises(nats.errors.Error) as e:
        await nats.connect(url, user_credentials=str(creds), allow_reconnect=False)
    return str(e.value)


@pytest.fixture
async def warden(local: ShoalSettings) -> AsyncIterator[Bus]:
    async with open_bus(local) as bus:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_warden(local, stop, ready))
        await asyncio.wait_for(ready.wait(), 10)
        yield bus
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_killed_instance_is_disconnected_and_cannot_reconnect(
    local: ShoalSettings, warden: Bus
) -> None:
    url = resolve_url(local, start=False)
    victim = await Instance(issue(local, "f9", "k1")).connect(url)
    bystander = await Instance(issue(local, "f9", "k2")).connect(url)
    await kill(warden, "instance", "k1", by="tester", reason="test")
    await asyncio.wait_for(victim.closed.wait(), 5)
    assert await refused(url, victim.creds) == "nats: 'Authorization Violation'"
    assert bystander.nc.is_connected and not bystander.closed.is_set()
    await bystander.nc.close()


async def test_killing_a_fleet_revokes_each_of_its_instances_and_no_other(
    local: ShoalSettings, warden: Bus
) -> None:
    url = resolve_url(local, start=False)
    fleet = [await Instance(issue(local, "f7", f"m{n}")).connect(url) for n in range(3)]
    other = await Instance(issue(local, "f8", "m9")).connect(url)
    await kill(warden, "fleet", "f7", by="tester")
    await asyncio.wait_for(asyncio.gather(*(i.closed.wait() for i in fleet)), 5)
    assert [await refused(url, i.creds) for i in fleet] == ["nats: 'Authorization Violation'"] * 3
    assert other.nc.is_connected
    await other.nc.close()


async def test_revocations_survive_a_server_restart(tmp_path: Path) -> None:
    settings = ShoalSettings(data_dir=tmp_path / "d", prefix="rv", principal="tester")
    server = EmbeddedServer(settings)
    try:
        server.ensure()
        async with open_bus(settings) as bus:
            creds = issue(settings, "f1", "r1")
            stop, ready = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(run_warden(settings, stop, ready))
            await asyncio.wait_for(ready.wait(), 10)
            await kill(bus, "instance", "r1", by="tester")
            for _ in range(100):  # the warden revokes within milliseconds of the kill
                if KeyStore.for_data_dir(settings.data_dir).revocations():
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 10)
        server.stop()
        record, started = server.ensure()
        assert started
        assert await refused(record.url, creds) == "nats: 'Authorization Violation'"
        alive = issue(settings, "f1", "r2")
        nc = await nats.connect(record.url, user_credentials=str(alive), allow_reconnect=False)
        await nc.close()
    finally:
        server.stop()


def test_kills_match_instance_and_fleet_names_literally(local: ShoalSettings) -> None:
    issue(local, "f[1]", "a?b")
    issue(local, "f1", "ab")
    issuer = InstanceIssuer(KeyStore.for_data_dir(local.data_dir), local)
    assert [(i.fleet, i.instance) for i in issuer.matching("instance", "a?b")] == [("f[1]", "a?b")]
    assert [(i.fleet, i.instance) for i in issuer.matching("fleet", "f[1]")] == [("f[1]", "a?b")]
    assert [i.instance for i in issuer.matching("fleet", "f1")] == ["ab"]
