"""Oversize messages are refused before the server sees them; a dead connection ends its owner."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from shoal.bus import Bus, ShoalSettings
from shoal.errors import ConnectionLost, MessageTooLarge
from shoal.schemas import CloudEvent, ToolCalled, new_id
from tests.natsproc import NatsProcess, auth_config

pytestmark = pytest.mark.timeout(30)


def event_of_size(size: int) -> CloudEvent:
    """A valid event whose JSON is ``size`` bytes (its arguments padded)."""
    event = CloudEvent.new(
        ToolCalled(call_id="c", tool="search", arguments={"q": ""}), iid=new_id(), source="s"
    )
    pad = size - len(event.to_json())
    return event.model_copy(
        update={"data": ToolCalled(call_id="c", tool="search", arguments={"q": "x" * pad})}
    )


async def test_an_event_that_fits_only_without_its_headers_is_refused_and_the_connection_stays(
    bus: Bus,
) -> None:
    event = event_of_size(bus.nc.max_payload - 20)  # fits alone; not with Nats-Msg-Id & co
    assert len(event.to_json()) == bus.nc.max_payload - 20
    with pytest.raises(MessageTooLarge, match=r"exceeds the server's max_payload of 1048576"):
        await bus.publish(event)
    with pytest.raises(MessageTooLarge):
        await bus.publish_many([event_of_size(100), event])
    with pytest.raises(MessageTooLarge):
        await bus.record(event, bus.subjects.tasks("f", "c"))
    assert bus.nc.is_connected
    small = event_of_size(300)
    await bus.publish(small)
    assert [s.event for s in await bus.session_events(small.iid)] == [small]
    # Refused before the server: nothing of the refused event was stored, anywhere.
    assert await bus.session_events(event.iid) == []
    tasks = await bus.js.stream_info(bus.topology.tasks.name)
    assert tasks.state.messages == 0


async def test_a_kv_value_over_max_payload_is_refused_by_name(bus: Bus) -> None:
    kv = await bus.kv(bus.topology.kill.name)
    with pytest.raises(MessageTooLarge):
        await kv.put("all", b"k" * (bus.nc.max_payload + 1))
    assert bus.nc.is_connected
    await kv.put("all", b"ok")
    entry = await kv.get("all")
    assert entry.value == b"ok"


async def test_an_oversize_reply_is_refused_and_the_responder_keeps_answering(bus: Bus) -> None:
    replies = {"big": b"r" * (bus.nc.max_payload - 5), "small": b"fine"}
    refused: list[str] = []

    async def answer(msg):  # type: ignore[no-untyped-def]
        try:
            await msg.respond(replies[msg.data.decode()])
        except MessageTooLarge:
            refused.append(msg.data.decode())
            await msg.respond(b"too large")

    subject = f"{bus.settings.prefix}.api.test.echo"
    await bus.nc.subscribe(subject, cb=answer)
    # The request carries a header, so the big answer fits alone but not with it.
    big = await bus.nc.request(subject, b"big", timeout=5, headers={"X-Req": "1" * 10})
    assert big.data == b"too large"
    small = await bus.nc.request(subject, b"small", timeout=5)
    assert (small.data, refused, bus.nc.is_connected) == (b"fine", ["big"], True)


async def test_a_connection_the_server_closed_ends_its_owner_with_connection_lost(
    settings: ShoalSettings,
) -> None:
    connected: asyncio.Future[Bus] = asyncio.get_running_loop().create_future()

    async def long_running() -> None:
        async with Bus.connect(settings.nats_url or "", settings, name="shoal-owner") as b:
            connected.set_result(b)
            await asyncio.Event().wait()  # a process waiting for work

    owner = asyncio.create_task(long_running())
    b = await connected
    # What a too-large dead letter used to do: a message over max_payload (counting its
    # headers) reaches the server, which closes the connection; nats-py does not reconnect.
    await NATS.publish(b.nc, "x.y", b"x" * (b.nc.max_payload - 10), headers={"A": "b" * 100})
    with pytest.raises(ConnectionLost) as lost:
        await asyncio.wait_for(owner, 10)
    assert str(lost.value) == (
        "the NATS connection was closed and will not reconnect (nats: maximum payload violation)"
    )


async def test_revoked_credentials_end_the_owner_with_connection_lost(
    nats_process: Callable[..., NatsProcess], tmp_path: Path, settings: ShoalSettings
) -> None:
    config = auth_config(tmp_path / "auth.conf", "operator", "agent")
    server = nats_process("-c", str(config))
    url = server.url.replace("nats://", "nats://agent:agent-pw@")
    connected = asyncio.Event()

    async def long_running() -> None:
        async with Bus.connect(url, settings, name="shoal-owner") as b:
            await b.provision()
            connected.set()
            await asyncio.Event().wait()

    owner = asyncio.create_task(long_running())
    await asyncio.wait_for(connected.wait(), 10)
    auth_config(config, "operator")  # the agent's user is removed
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)  # reload: the server drops the agent's connection
    # nats-py would retry the refused credentials forever; after 3 refusals it is closed.
    with pytest.raises(ConnectionLost) as lost:
        await asyncio.wait_for(owner, 15)
    assert str(lost.value) == (
        "the NATS connection was closed and will not reconnect (nats: 'Authorization Violation')"
    )
