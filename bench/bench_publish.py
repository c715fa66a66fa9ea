"""Benchmark: shoal's publish path against raw nats-py, same server, same run.

shoal's path per event: build a ``CloudEvent`` around a realistic ``ModelCalled`` payload
(``CloudEvent.new``: pydantic validation, fresh ULID, clock), build its subject, serialize
it, publish it to JetStream with ``Nats-Msg-Id`` and await the ack.
The ceiling: raw nats-py publishing the same, already serialized, bytes and headers.

Two modes, each run for both sides in alternating rounds (medians reported):

* pipelined: many acks in flight (``Bus.publish_many`` vs ``js.publish_async``, both with
  nats-py's default window of 4000 outstanding acks);
* sequential: await each ack before the next publish (``Bus.publish`` vs ``js.publish``).

Each side's figure is its wall-clock rate and this process's CPU time per event (steadier
than the wall clock on a shared machine); a last line times shoal's own steps alone (build
and validate, subject, serialize, headers), so the gap to raw can be accounted for.

Run: ``uv run python bench/bench_publish.py`` (``--profile`` adds a cProfile of shoal's
pipelined path). The embedded nats-server is started in a temporary data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from shoal.bus import Bus, ShoalSettings, event_headers
from shoal.bus.connection import message_size
from shoal.ops.server import EmbeddedServer
from shoal.schemas import CloudEvent, ModelCalled

SESSIONS = 100  # events spread over this many IIDs, as a busy fleet would produce
Prepared = tuple[str, bytes, dict[str, str]]


def model_called(n: int) -> CloudEvent:
    """One realistic ``model.called`` event, built and validated as an agent's gateway would."""
    data = ModelCalled(
        call_id=f"call-{n}",
        model="claude-sonnet-4-5",
        provider="anthropic",
        input_tokens=1800 + n % 500,
        output_tokens=240 + n % 60,
        cached_tokens=1024,
        latency_ms=812.4,
        finish_reason="stop",
        reported_cost_usd=Decimal("0.009120"),
    )
    return CloudEvent.new(
        data,
        iid=f"01JBENCHSESSION{n % SESSIONS:05d}",
        gid="01JBENCHGOAL000000000000000",
        source="shoal://code-review/reviewer/inst-7",
        fleet="code-review",
        agent="reviewer",
        instance="inst-7",
        principal="alice@example.com",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )


def shoal_events(count: int) -> Iterator[CloudEvent]:
    """Built lazily, so building and validating is timed as part of shoal's path."""
    return (model_called(n) for n in range(count))


def prepared(bus: Bus, count: int) -> list[Prepared]:
    """The raw side's input: subject, JSON bytes and headers, built before the clock starts."""
    out = []
    for n in range(count):
        event = model_called(n)
        out.append((bus.event_subject(event), event.to_json(), event_headers(event)))
    return out


async def raw_pipelined(nc: NATS, items: list[Prepared], timeout: float) -> None:
    js = nc.jetstream(timeout=timeout)
    futures = [
        await js.publish_async(subject, payload, headers=headers)
        for subject, payload, headers in items
    ]
    # nats-py's own completion wait: one event for the whole batch (cheapest), then results.
    await asyncio.wait_for(js.publish_async_completed(), timeout=timeout)
    acks = [future.result() for future in futures]
    assert len(acks) == len(items) and not any(a.duplicate for a in acks)


async def raw_sequential(nc: NATS, items: list[Prepared], timeout: float) -> None:
    js = nc.jetstream(timeout=timeout)
    for subject, payload, headers in items:
        await js.publish(subject, payload, headers=headers, timeout=timeout)


async def shoal_pipelined(bus: Bus, count: int) -> None:
    acks = await bus.publish_many(shoal_events(count))
    assert len(acks) == count and not any(a.duplicate for a in acks)


async def shoal_sequential(bus: Bus, count: int) -> None:
    for event in shoal_events(count):
        await bus.publish(event)


@dataclass(frozen=True)
class Sample:
    """One timed round: wall-clock rate, and this process's CPU time per event."""

    rate: float
    cpu_us: float


@dataclass(frozen=True)
class Result:
    mode: str
    raw: Sample
    shoal: Sample


async def timed(run: Callable[[], Awaitable[None]], count: int) -> Sample:
    # CPU time of this process is what shoal adds on the client; on a shared 2-core box it
    # is steadier than the wall clock, which other processes' load moves around.
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Sample(count / wall, cpu / count * 1e6)


def median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.rate for s in samples), statistics.median(s.cpu_us for s in samples)
    )


async def compare(
    mode: str,
    rounds: int,
    count: int,
    raw: Callable[[list[Prepared]], Awaitable[None]],
    shoal: Callable[[], Awaitable[None]],
    bus: Bus,
) -> Result:
    """Alternate raw and shoal rounds (so drift and contention hit both); return medians.

    Every round publishes fresh event ids: a repeated id would be de-duplicated by the
    server, which is cheaper than storing it. The stream is purged before each round.
    """
    raw_samples, shoal_samples = [], []
    for _ in range(rounds):
        items = prepared(bus, count)
        await bus.js.purge_stream(bus.topology.events.name)
        raw_samples.append(await timed(lambda: raw(items), count))  # noqa: B023 (awaited now)
        await bus.js.purge_stream(bus.topology.events.name)
        shoal_samples.append(await timed(shoal, count))
    return Result(mode, median(raw_samples), median(shoal_samples))


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        settings = ShoalSettings(data_dir=Path(tmp), prefix="bench", request_timeout=30.0)
        server = EmbeddedServer(settings)
        record = server.start()
        try:
            # The ceiling is plain nats-py (shoal's client adds a size check: see breakdown).
            nc = await nats.connect(record.url, name="bench-raw")
            async with Bus.connect(record.url, settings, name="bench-shoal") as bus:
                await bus.provision()
                timeout = settings.request_timeout
                # Warm up connections, inboxes and pydantic before timing anything.
                await raw_pipelined(nc, prepared(bus, 500), timeout)
                await shoal_pipelined(bus, 500)
                results = [
                    await compare(
                        f"pipelined ({args.events} events, window 4000)",
                        args.rounds,
                        args.events,
                        lambda items: raw_pipelined(nc, items, timeout),
                        lambda: shoal_pipelined(bus, args.events),
                        bus,
                    ),
                    await compare(
                        f"sequential ({args.sequential} events, await each ack)",
                        args.rounds,
                        args.sequential,
                        lambda items: raw_sequential(nc, items, timeout),
                        lambda: shoal_sequential(bus, args.sequential),
                        bus,
                    ),
                ]
                report(results, args.rounds)
                breakdown(bus, args.events)
                if args.profile:
                    await bus.js.purge_stream(bus.topology.events.name)
                    await profile(bus, args.events)
            await nc.close()
        finally:
            server.stop()


def report(results: list[Result], rounds: int) -> None:
    print(f"JetStream publish, embedded nats-server, R1 file store; median of {rounds} rounds")
    print(
        f"{'mode':<42} {'raw nats-py':>12} {'shoal':>12} {'shoal/raw':>9}"
        f" {'raw CPU':>10} {'shoal CPU':>10}"
    )
    for r in results:
        print(
            f"{r.mode:<42} {r.raw.rate:>10,.0f}/s {r.shoal.rate:>10,.0f}/s"
            f" {r.shoal.rate / r.raw.rate:>9.0%}"
            f" {r.raw.cpu_us:>7.1f} us {r.shoal.cpu_us:>7.1f} us"
        )
    print("(CPU = this process's CPU time per event; the server runs in its own process)")


def breakdown(bus: Bus, count: int) -> None:
    """CPU per event of the steps shoal adds before ``publish_async``, each timed alone.

    Events are dropped once timed, as in the publish path: holding thousands of them alive
    would bill the cyclic garbage collector's scans of them to the step being timed.
    """
    steps: dict[str, Callable[[CloudEvent], object]] = {
        "subject": bus.event_subject,
        "serialize (to_json)": CloudEvent.to_json,
        "headers": event_headers,
    }
    cpu = time.process_time()
    for n in range(count):
        model_called(n)
    costs = {"build + validate (CloudEvent.new)": time.process_time() - cpu}
    sample = list(shoal_events(100))
    for name, step in steps.items():
        cpu = time.process_time()
        for n in range(count):
            step(sample[n % 100])
        costs[name] = time.process_time() - cpu
    # The client's check that headers + body fit max_payload (ShoalClient.publish).
    pairs = [(e.to_json(), event_headers(e)) for e in sample]
    cpu = time.process_time()
    for n in range(count):
        message_size(*pairs[n % 100])
    costs["size check (message_size)"] = time.process_time() - cpu
    print("shoal's own steps, CPU per event:", end="")
    print(",".join(f" {name} {t / count * 1e6:.1f} us" for name, t in costs.items()))


async def profile(bus: Bus, count: int) -> None:
    """cProfile of shoal's pipelined path: where its time goes beyond raw publishing."""
    profiler = cProfile.Profile()
    profiler.enable()
    await shoal_pipelined(bus, count)
    profiler.disable()
    print(f"\ncProfile of shoal pipelined, {count} events (top 25 by own time):")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="per pipelined round")
    parser.add_argument("--sequential", type=int, default=2_000, help="per sequential round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile shoal's pipelined path")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
