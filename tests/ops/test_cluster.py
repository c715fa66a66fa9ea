"""The scale-out path, proven: shoal on a real 3-node JetStream cluster (routes on loopback).

The cluster is the one ``docker-compose.yml`` describes, started from the local nats-server
binary. Streams are provisioned R3; killing a node (the stream leader included) with SIGKILL
loses no acknowledged event and, since a retried publish keeps its ``Nats-Msg-Id``, stores
none twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest

from shoal.bus import Bus, ShoalSettings, Stored
from shoal.schemas import CloudEvent
from shoal.schemas.events import ModelCalled
from tests.natscluster import ClusterNode, NatsCluster

pytestmark = pytest.mark.timeout(60)

IID = "01JCLUSTERSESSION"
GID = "01JCLUSTERGOAL"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster", name="shoal-test").start()
    try:
        await nodes.wait_for_jetstream()
        yield nodes
    finally:
        nodes.stop()


def cluster_settings(url: str, tmp_path: Path, prefix: str) -> ShoalSettings:
    return ShoalSettings(
        nats_url=url,
        stream_replicas=3,
        prefix=prefix,
        data_dir=tmp_path / "data",
        principal="tester",
        request_timeout=2.0,
    )


def model_called(n: int) -> CloudEvent:
    data = ModelCalled(
        call_id=f"call-{n}",
        model="gpt-4o-mini",
        provider="openai",
        input_tokens=100 + n,
        output_tokens=20,
        latency_ms=12.5,
    )
    return CloudEvent.new(data, iid=IID, gid=GID, source="shoal://test/agent/1", fleet="test")


async def provisioned_leader(url: str, settings: ShoalSettings) -> str:
    """Provision shoal's topology through ``url``; return the event stream's leader."""
    async with Bus.connect(url, settings, name="shoal-provision") as bus:
        await bus.provision()
        info = await bus.js.stream_info(bus.topology.events.name)
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


async def publish_until_acked(bus: Bus, event: CloudEvent, timeout: float = 20.0) -> int:
    """Publish, retrying the same event (same id) until acked; return the attempts it took.

    While a new stream leader is elected a publish fails or times out; a timed-out one may
    still have been stored, which is why the retry must carry the same ``Nats-Msg-Id``.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        try:
            await bus.publish(event)
            return attempts
        except nats.errors.Error:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def session_events_after_a_crash(bus: Bus, iid: str, timeout: float = 20.0) -> list[Stored]:
    """Read a session back, retrying while the cluster has not yet noticed a dead peer.

    A read creates an ephemeral consumer; right after a SIGKILL the meta leader still
    counts the dead node as a peer and may place the consumer there, so the create request
    times out. It is placed on a live node once the death is noticed; the retry re-asks.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await bus.session_events(iid)
        except nats.errors.Error:
            if time.monotonic() > deadline:
                raise


def survivor(cluster: NatsCluster, *, besides: str) -> ClusterNode:
    return next(node for node in cluster.nodes if node.name != besides)


async def test_shoal_streams_and_buckets_are_provisioned_with_three_replicas(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    settings = cluster_settings(cluster.urls[0], tmp_path, "t" + uuid.uuid4().hex[:10])
    names = {node.name for node in cluster.nodes}
    async with Bus.connect(cluster.urls[0], settings, name="shoal-test") as bus:
        created = await bus.provision()
        stream_names = [spec.name for spec in bus.topology.streams]
        bucket_streams = [f"KV_{spec.name}" for spec in bus.topology.buckets]
        assert len(created) == 9
        assert await bus.provision() == []
        for name in stream_names + bucket_streams:
            info = await bus.js.stream_info(name)
            assert info.config.num_replicas == 3, name
            assert info.cluster is not None and info.cluster.replicas is not None
            assert info.cluster.name == "shoal-test"
            peers = {info.cluster.leader} | {peer.name for peer in info.cluster.replicas}
            assert len(info.cluster.replicas) == 2, name
            assert peers == names, name


async def test_r3_events_are_published_and_read_back_through_another_node(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    prefix = "t" + uuid.uuid4().hex[:10]
    first, second = cluster.urls[0], cluster.urls[1]
    await provisioned_leader(first, cluster_settings(first, tmp_path, prefix))
    events = [model_called(n) for n in range(50)]
    async with Bus.connect(first, cluster_settings(first, tmp_path, prefix)) as bus:
        acks = [await bus.publish(event) for event in events[:25]]
        acks += await bus.publish_many(events[25:])
        duplicate = await bus.publish(events[0])
    assert [ack.seq for ack in acks] == list(range(1, 51))
    assert duplicate.duplicate is True
    async with Bus.connect(second, cluster_settings(second, tmp_path, prefix)) as bus:
        stored = await bus.session_events(IID)
        by_goal = await bus.goal_events(GID)
    assert [s.event.id for s in stored if s.event] == [e.id for e in events]
    assert [s.seq for s in by_goal] == list(range(1, 51))


async def test_killing_a_follower_keeps_every_publish_acked(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    prefix = "t" + uuid.uuid4().hex[:10]
    url = cluster.urls[0]
    leader = await provisioned_leader(url, cluster_settings(url, tmp_path, prefix))
    # A follower of the event stream that the client is not connected to.
    follower = next(n for n in cluster.nodes if n.name != leader and n.url != url)
    client = survivor(cluster, besides=follower.name)
    events = [model_called(n) for n in range(200)]
    settings = cluster_settings(client.url, tmp_path, prefix)
    async with Bus.connect(client.url, settings, name="shoal-test") as bus:
        acks = [await bus.publish(event) for event in events[:100]]
        follower.kill()
        # Two of three replicas are a quorum: no retry, every publish acked first time.
        acks += [await bus.publish(event) for event in events[100:]]
        await cluster.wait_for_jetstream()
        stored = await session_events_after_a_crash(bus, IID)
        info = await bus.js.stream_info(bus.topology.events.name)
    assert [ack.seq for ack in acks] == list(range(1, 201))
    assert [s.event.id for s in stored if s.event] == [e.id for e in events]
    assert info.state.messages == 200
    assert info.cluster is not None and info.cluster.leader == leader


async def test_killing_the_stream_leader_loses_no_acknowledged_event(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    prefix = "t" + uuid.uuid4().hex[:10]
    url = cluster.urls[0]
    leader = await provisioned_leader(url, cluster_settings(url, tmp_path, prefix))
    client = survivor(cluster, besides=leader)
    events = [model_called(n) for n in range(300)]
    acked: list[str] = []
    attempts = 0
    halfway = asyncio.Event()
    settings = cluster_settings(client.url, tmp_path, prefix)
    async with Bus.connect(client.url, settings, name="shoal-test") as bus:

        async def publisher() -> None:
            nonlocal attempts
            for n, event in enumerate(events):
                attempts += await publish_until_acked(bus, event)
                acked.append(event.id)
                if n == 99:
                    halfway.set()

        task = asyncio.create_task(publisher())
        await asyncio.wait_for(halfway.wait(), timeout=20)
        cluster.node(leader).kill()  # while publishes are in flight
        await asyncio.wait_for(task, timeout=30)
        await cluster.wait_for_jetstream()
        stored = await session_events_after_a_crash(bus, IID)
        info = await bus.js.stream_info(bus.topology.events.name)

    assert attempts > len(events), "the kill should have interrupted at least one publish"
    assert acked == [e.id for e in events]
    # Every acknowledged event is there, once, in publish order (retries were de-duplicated).
    assert [s.event.id for s in stored if s.event] == acked
    assert info.state.messages == 300
    assert info.cluster is not None and info.cluster.replicas is not None
    assert info.cluster.leader not in (None, leader)
    lagging = {peer.name: peer.current for peer in info.cluster.replicas}
    assert lagging[leader] is False
