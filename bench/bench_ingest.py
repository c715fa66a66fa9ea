"""Benchmark: core ingestion rate, SHOAL_EVENTS → recorded aggregates (SQLite), exactly once.

A realistic mix (goals submitted and planned, tasks assigned/started/completed, one retry
and one policy denial per goal, model and tool calls: ~9 bus events per session) is
published to a fresh stream, then ingested by the core's real loop (fetch a batch, fold it
into Session/Goal/Instance aggregates, write events + tracking in one SQLite transaction,
ack). Ceiling, same run, same stream: a raw nats-py consumer configured as the core's (push,
flow control, one ack per batch), touching nothing else — the rate the core could reach if
folding and writing were free; the pull ``fetch(batch)`` rate is printed beside it.

Run: ``uv run python bench/bench_ingest.py [--events 100000] [--batch 1000]``.
Starts its own nats-server in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from nats.aio.msg import Msg
from nats.js import api

from shoal.aggregates import open_core
from shoal.aggregates.ingestion import Ingestion, processor_for
from shoal.bus import Bus, ShoalSettings
from tests.aggregates.eventmix import Mix, publish_all
from tests.natsproc import NatsProcess


async def raw_pull(bus: Bus, total: int, batch: int) -> float:
    """Messages/s of a bare pull consumer: ``fetch(batch)``, one ack per batch."""
    stream = bus.topology.events.name
    await bus.js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name="raw-pull", ack_policy=api.AckPolicy.ALL, max_ack_pending=batch * 4
        ),
    )
    psub = await bus.js.pull_subscribe_bind(durable="raw-pull", stream=stream)
    started, seen = time.perf_counter(), 0
    while seen < total:
        msgs = await psub.fetch(batch, timeout=5)
        seen += len(msgs)
        await msgs[-1].ack()
    elapsed = time.perf_counter() - started
    await psub.unsubscribe()
    return seen / elapsed


async def raw_push(bus: Bus, total: int, batch: int) -> float:
    """Messages/s of a bare push consumer configured as the core's (flow control, ack all)."""
    stream = bus.topology.events.name
    config = api.ConsumerConfig(
        durable_name="raw-push",
        deliver_subject=bus.nc.new_inbox(),
        ack_policy=api.AckPolicy.ALL,
        max_ack_pending=batch * 2,
        flow_control=True,
        idle_heartbeat=5.0,
    )
    await bus.js.add_consumer(stream, config)
    buffer: list[Msg] = []
    full, seen = asyncio.Event(), 0

    async def receive(msg: Msg) -> None:
        buffer.append(msg)
        if len(buffer) >= batch:
            full.set()

    started = time.perf_counter()
    sub = await bus.js.subscribe_bind(stream, config, "raw-push", cb=receive, manual_ack=True)
    while seen < total:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(full.wait(), 0.02)
        full.clear()
        if buffer:
            taken = buffer[:]
            del buffer[:]
            seen += len(taken)
            await taken[-1].ack()
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return seen / elapsed


async def core_ingest(bus: Bus, settings: ShoalSettings, total: int) -> tuple[float, float, int]:
    """Events/s of the core's loop from the first fetch to the last committed batch.

    Also events per CPU-second of this process over the same span: on a shared machine the
    wall-clock rate swings with other work, the CPU cost per event much less.
    """
    app = await asyncio.to_thread(open_core, settings)
    processor = await asyncio.to_thread(processor_for, app, settings, bus)
    ingestion = Ingestion(bus, app, processor, batch=settings.core_batch, stuck_after_s=3600)
    await ingestion.attach()
    started, cpu_started = time.perf_counter(), time.process_time()
    while ingestion.stats.messages < total:
        fetched = await ingestion.fetch(timeout=5)
        assert fetched is not None, "the stream ran dry before every event was ingested"
        await ingestion.process(fetched)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    await ingestion.detach()
    recorded = app.recorder.max_notification_id() or 0
    app.close()
    return total / elapsed, total / cpu, recorded


async def main(events: int, batch: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-ingest-"))
    server = NatsProcess(root / "js").start()
    try:
        settings = ShoalSettings(
            nats_url=server.url, prefix="bench", data_dir=root / "data", core_batch=batch
        )
        mix = Mix(seed=1).until(events)
        async with Bus.connect(server.url, settings, name="bench") as bus:
            await bus.provision()
            await publish_all(bus, mix.events, chunk=5000)
            total = len(mix.events)
            pull = await raw_pull(bus, total, batch)
            push = await raw_push(bus, total, batch)
            rate, cpu_rate, recorded = await core_ingest(bus, settings, total)
            app = open_core(settings)
            cost = sum(s.cost_usd for s in app.sessions())
            app.close()
        print(f"events: {total} ({mix.sessions} sessions), batch {batch}, SQLite")
        print(f"raw nats-py pull fetch({batch}) + ack:                {pull:10,.0f} msg/s")
        print(f"raw nats-py push, flow control, ack per batch (ceiling): {push:10,.0f} msg/s")
        print(f"shoal core ingestion (fold + atomic write + ack):  {rate:10,.0f} events/s")
        print(f"  per CPU-second of the core's process:           {cpu_rate:10,.0f} events")
        print(f"ratio: {rate / push:.0%} of the raw consume rate; target >= 10,000 events/s")
        print(f"aggregate events recorded: {recorded} ({recorded / total:.2f} per bus event)")
        print(f"check: total cost ${cost} == generated ${mix.cost}: {cost == mix.cost}")
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.batch))
