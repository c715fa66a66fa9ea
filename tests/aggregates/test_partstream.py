"""The partition stream: the server sends each core partition exactly its own share."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg
from nats.js import api

from shoal.aggregates.partitions import Owner, Partition, fnv1a32
from shoal.aggregates.partstream import PartitionStream
from shoal.aggregates.receiver import DeliveryGap
from shoal.aggregates.registry import LIFECYCLE_TYPES
from shoal.aggregates.sharefeed import Share, ShareReceiver
from shoal.bus import Bus
from tests.aggregates.eventmix import publish_all
from tests.aggregates.partitioned import mixed

ODD = [
    # A one-character GID, GIDs with "_" inside or leading, lifecycle events in a goal, a bare
    # lifecycle event with no publisher tokens, and subjects that are not event-shaped.
    "events.G.s-odd-1.task.started.cli.t",
    "events.a_b.s-odd-2.task.started.cli.t",
    "events._x.s-odd-3.model.called.cli.t",
    "events.G9.i-odd.agent.started.cli.t",
    "events._.i-odd2.agent.killed",
    "events.short",
    "events.a.b.c",
    "events.1.2.3.4.5.6.7.8.9",
    "events.1.2.3.4.5.6.7.8.9.10.11",
]


async def _log(bus: Bus) -> list[tuple[int, str]]:
    """Every (sequence, subject) of the event log, in order."""
    info = await bus.js.stream_info(bus.topology.events.name)
    sub = await bus.js.subscribe(
        bus.subjects.all_events, stream=bus.topology.events.name, ordered_consumer=True
    )
    out = []
    for _ in range(info.state.messages):
        m = await sub.next_msg(5)
        out.append((m.metadata.sequence.stream, m.subject))
    await sub.unsubscribe()
    return out


async def _share(bus: Bus, stream: PartitionStream, index: int) -> list[int]:
    """The log sequences partition ``index``'s feeds are sent, merged (each once), in order."""
    got: set[int] = set()
    for n, (_, subject) in enumerate(stream.feeds(index)):
        name = f"probe-{index}-{n}"
        await bus.js.add_consumer(
            stream.name,
            api.ConsumerConfig(
                durable_name=name,
                filter_subject=subject,
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
        sub = await bus.js.pull_subscribe_bind(name, stream.name)
        while pending := (await bus.js.consumer_info(stream.name, name)).num_pending:
            for m in await sub.fetch(min(pending, 1000), timeout=5):
                got.add(stream.origin(m.headers, None)[0])
        await bus.js.delete_consumer(stream.name, name)
    return sorted(got)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("count", [2, 4])
async def test_the_server_sends_each_partition_its_share_and_every_partition_the_shared(
    bus: Bus, count: int
) -> None:
    mix = mixed(seed=7, total=3000)
    await publish_all(bus, mix.events, chunk=1000)
    for tail in ODD:
        await bus.js.publish(f"{bus.subjects.prefix}.{tail}", b"{}")
    stream = PartitionStream(bus.topology.events, bus.subjects.prefix, count)
    await stream.ensure(bus.js)
    await stream.ensure(bus.js)  # a second core process asks again: unchanged
    log = await _log(bus)
    sourced = {seq for seq, s in log if len(s.split(".")) >= 5}  # all but "events.short"
    assert len(sourced) == len(log) - 1
    for _ in range(100):
        if (await bus.js.stream_info(stream.name)).state.messages == len(sourced):
            break
        await asyncio.sleep(0.1)
    assert (await bus.js.stream_info(stream.name)).state.messages == len(sourced)

    parts = [Partition(k, count) for k in range(count)]
    bare_home = fnv1a32(b"_") % count

    def sent_to(index: int, subject: str) -> bool:
        """The share the module doc promises: by the GID's hash, or the IID's in ``h_``."""
        tokens = subject.split(".")
        if len(tokens) < 5:
            return False  # no GID and IID tokens: not sourced
        if tokens[4] == "agent":
            return True  # lifecycle: every partition
        gid, iid = (fnv1a32(t.encode()) % count for t in tokens[2:4])
        return gid == index or (gid == bare_home and index != bare_home and iid == index)

    received = 0
    for part in parts:
        got = await _share(bus, stream, part.index)
        received += len(got)
        assert got == [seq for seq, s in log if sent_to(part.index, s)]
        # Nothing of its own is missing; what it did not ask for is another's, stepped over.
        mine = {seq for seq, s in log if part.owner(s) is not Owner.FOREIGN and seq in sourced}
        assert mine <= set(got)
    shared = [seq for seq, s in log if parts[0].home(s) is None]
    assert received < len(log) * (1.5 if count == 2 else 2) + len(shared) * count
    # Every event reaches its home, the shared ones reach every partition.
    lifecycle = [e for e in mix.events if e.type in LIFECYCLE_TYPES]
    assert len(lifecycle) >= 2 and len(shared) == len(lifecycle) + 2
    # Not event-shaped but with GID and IID tokens: its home partition dead-letters it.
    odd = {s.split(".", 1)[1]: parts[0].home(s) for _, s in log[-len(ODD) :]}
    assert odd["events.a.b.c"] == fnv1a32(b"a") % count
    assert odd["events.short"] == 0  # not sourced at all (docs/scale.md)


async def test_start_seq_maps_a_log_position_to_the_partition_streams_sequence(bus: Bus) -> None:
    mix = mixed(seed=3, total=400)
    await publish_all(bus, mix.events, chunk=400)
    for seq in range(11, 21):  # ten events gone from the log (limits, a purge) before it is sourced
        await bus.js.delete_msg(bus.topology.events.name, seq)
    stream = PartitionStream(bus.topology.events, bus.subjects.prefix, 2)
    await stream.ensure(bus.js)
    held = len(mix.events) - 10
    for _ in range(100):
        if (await bus.js.stream_info(stream.name)).state.messages == held:
            break
        await asyncio.sleep(0.1)
    assert await stream.start_seq(bus.js, 0) is None
    assert await stream.start_seq(bus.js, 1) == 2
    assert await stream.start_seq(bus.js, 10) == 11  # the log's #21, the next one held
    assert await stream.start_seq(bus.js, 15) == 11
    assert await stream.start_seq(bus.js, 217) == 208
    assert await stream.start_seq(bus.js, len(mix.events)) == held + 1
    assert await stream.origin_of_last(bus.js) == (held, len(mix.events))


def _delivery(stream: str, seq: int, delivered: int) -> Msg:
    reply = f"$JS.ACK.{stream}.core-p0of2.1.{seq}.{delivered}.1700000000000000000.0"
    return Msg(_client=None, subject="x", reply=reply)  # type: ignore[arg-type]


async def test_a_lost_delivery_to_a_partition_is_a_gap_not_a_skip(bus: Bus) -> None:
    # A feed's stream sequences have holes by design; its delivery sequence has none unless
    # a message was lost on the way (then it re-attaches: it never acks past a lost one).
    stream = PartitionStream(bus.topology.events, bus.subjects.prefix, 2)
    receiver = ShareReceiver(bus, lambda: 0, consumer="core-p0of2", share=Share(stream, 0))
    receive = receiver._receiver(0)
    for seq, delivered in ((4, 1), (9, 2), (9, 2), (12, 3)):  # (9, 2) twice: a redelivery
        await receive(_delivery(stream.name, seq, delivered))
    assert sorted(receiver._buffer) == [4, 9, 12] and receiver._gap is None
    await receive(_delivery(stream.name, 20, 5))
    with pytest.raises(DeliveryGap, match=r"deliveries 4\.\.4 of core-p0of2 were lost"):
        await receiver.fetch(0.1)
