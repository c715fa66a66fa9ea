"""Benchmark: core ingestion rate, SHOAL_EVENTS → recorded aggregates (SQLite), exactly once.

A realistic mix (goals submitted and planned, tasks assigned/started/completed, one retry
and one policy denial per goal, model and tool calls: ~9 bus events per session) is
published to a fresh stream, then ingested by the core's real loop (fetch a batch, fold it
into Session/Goal/Instance aggregates, write events + tracking in one SQLite transaction,
ack). Ceiling, same run, same stream: a raw nats-py consumer configured as the core's (push,
flow control, one ack per batch), touching nothing else — the rate the core could reach if
folding and writing were free; the pull ``fetch(batch)`` rate is printed beside it.

Steady-rate mode (``--rates 100,1000,10000``): events published at a fixed rate while the core
runs, and the time from each event's publish to the commit of the batch that folded it,
p50/p99 per rate. The publisher runs in the same process (its share of the CPU is counted
against the core on 2 cores). Target: p99 < 100 ms at every rate.

Run: ``uv run python bench/bench_ingest.py [--events 100000] [--batch 1000] [--rates ...]``.
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


async def steady(server: NatsProcess, root: Path, rate: int, seconds: float, batch: int) -> str:
    """Publish at ``rate`` events/s for ``seconds`` while the core ingests; latency p50/p99."""
    settings = ShoalSettings(
        nats_url=server.url,
        prefix=f"steady{rate}",
        data_dir=root / f"steady{rate}",
        core_batch=batch,
    )
    mix = Mix(seed=2).until(int(rate * seconds))
    published: dict[int, float] = {}
    folded: list[float] = []
    async with Bus.connect(server.url, settings, name="bench-steady") as bus:
        await bus.provision()
        app = await asyncio.to_thread(open_core, settings)
        processor = await asyncio.to_thread(processor_for, app, settings, bus)
        ingestion = Ingestion(bus, app, processor, batch=batch, stuck_after_s=3600)
        await ingestion.attach()
        total = len(mix.events)

        async def publish() -> None:
            tick = 0.01
            per_tick = max(1, round(rate * tick))
            start = time.perf_counter()
            for n, i in enumerate(range(0, total, per_tick)):
                delay = start + n * tick - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.perf_counter()
                for ack in await bus.publish_many(mix.events[i : i + per_tick]):
                    published[ack.seq] = sent

        publisher = asyncio.create_task(publish())
        while ingestion.stats.messages < total:
            fetched = await ingestion.fetch(timeout=5)
            assert fetched is not None, "the stream ran dry"
            await ingestion.process(fetched)
            done = time.perf_counter()
            folded += [done - published.get(m.seq, done) for m in fetched.messages]
        await publisher
        await ingestion.detach()
        app.close()
    folded.sort()
    p50, p99 = folded[len(folded) // 2], folded[int(len(folded) * 0.99)]
    return (
        f"steady {rate:>6,}/s for {seconds:.0f}s: publish -> fold p50 {p50 * 1000:6.1f} ms, "
        f"p99 {p99 * 1000:6.1f} ms over {len(folded)} events "
        f"({ingestion.stats.batches} batches); target p99 < 100 ms"
    )


async def main(events: int, batch: int, rates: list[int], seconds: float) -> None:
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
        for rate in rates:
            print(await steady(server, root, rate, seconds, batch))
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rates", default="100,1000,10000", help="steady rates, events/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="per steady rate")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r]
    asyncio.run(main(args.events, args.batch, rates, args.seconds))
