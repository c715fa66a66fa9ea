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

Everything runs twice: on a nats-server without authentication, then on shoal's default
embedded server (decentralized JWT auth), where both sides publish with one instance's
scoped credentials (publish permissions checked on every message) — side by side.

Run: ``uv run python bench/bench_publish.py`` (``--profile`` adds a cProfile of shoal's
pipelined path). The servers are started in a temporary data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from nats.aio.client import Client as NATS

from shoal.auth import InstanceScope, KeyStore
from shoal.auth.issuer import InstanceIssuer
from shoal.bus import Bus, ShoalSettings, event_headers, open_connection
from shoal.ops.server import EmbeddedServer
from shoal.schemas import CloudEvent, ModelCalled
from tests.natsproc import NatsProcess

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


@dataclass
class Side:
    """One server and its connections: ``auth off`` or ``auth on``."""

    label: str
    server_pid: int
    bus: Bus
    admin: Bus
    nc: NATS

    def server_cpu(self) -> float:
        """CPU seconds the nats-server process has used (user + system, from /proc)."""
        fields = Path(f"/proc/{self.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    side: str
    mode: str
    raw: Sample
    shoal: Sample
    server_us: float
    """The server's CPU per event (shoal's side), where permission checks would show."""


async def compare(
    mode: str,
    rounds: int,
    count: int,
    sides: list[Side],
    raw: Callable[[Side, list[Prepared]], Awaitable[None]],
    shoal: Callable[[Side], Awaitable[None]],
) -> list[Result]:
    """Alternate raw and shoal rounds on every side (so drift and contention hit all of them
    alike); return medians per side.

    Every round publishes fresh event ids: a repeated id would be de-duplicated by the
    server, which is cheaper than storing it. The stream is purged (by the admin: the
    publisher may not) before each round.
    """
    samples: dict[str, tuple[list[Sample], list[Sample], list[float]]] = {
        side.label: ([], [], []) for side in sides
    }
    for _ in range(rounds):
        for side in sides:
            raws, shoals, server = samples[side.label]
            items = prepared(side.bus, count)
            await side.admin.js.purge_stream(side.admin.topology.events.name)
            raws.append(await timed(lambda: raw(side, items), count))  # noqa: B023
            await side.admin.js.purge_stream(side.admin.topology.events.name)
            before = side.server_cpu()
            shoals.append(await timed(lambda: shoal(side), count))  # noqa: B023
            server.append((side.server_cpu() - before) / count * 1e6)
    return [
        Result(label, mode, median(r), median(sh), statistics.median(cpu))
        for label, (r, sh, cpu) in samples.items()
    ]


PUBLISHER = InstanceScope("code-review", "reviewer", "inst-7", ("review",), ())
"""The identity the events claim; with auth on, the publisher holds exactly its credentials."""


async def open_side(
    stack: AsyncExitStack,
    label: str,
    pid: int,
    url: str,
    publisher: ShoalSettings,
    admin_settings: ShoalSettings,
) -> Side:
    admin = await stack.enter_async_context(Bus.connect(url, admin_settings, name="bench-admin"))
    await admin.provision()
    nc = await open_connection(url, publisher, name="bench-raw")
    stack.push_async_callback(nc.close)
    bus = await stack.enter_async_context(Bus.connect(url, publisher, name="bench-shoal"))
    # Warm up connections, inboxes and pydantic before timing anything.
    await raw_pipelined(nc, prepared(bus, 500), publisher.request_timeout)
    await shoal_pipelined(bus, 500)
    return Side(label, pid, bus, admin, nc)


async def run(args: argparse.Namespace) -> None:
    """The same measurement on a server without auth and on shoal's default (JWT auth on,
    the publisher holding one instance's scoped credentials), rounds interleaved."""
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        base = ShoalSettings(data_dir=Path(tmp), prefix="bench", request_timeout=30.0)
        open_server = NatsProcess(Path(tmp) / "open-js").start()
        server = EmbeddedServer(base)
        record = server.start()
        try:
            async with AsyncExitStack() as stack:
                plain = base.model_copy(update={"nats_url": open_server.url})
                assert open_server.proc is not None
                off = await open_side(
                    stack, "auth off", open_server.proc.pid, open_server.url, plain, plain
                )
                issuer = InstanceIssuer(KeyStore.for_data_dir(base.data_dir), base)
                creds = issuer.issue(PUBLISHER)
                publisher = base.model_copy(update={"nats_url": record.url, "creds": creds})
                on = await open_side(stack, "auth on", record.pid, record.url, publisher, base)
                sides = [off, on]
                timeout = base.request_timeout
                results = [
                    *await compare(
                        f"pipelined ({args.events} events, window 4000)",
                        args.rounds,
                        args.events,
                        sides,
                        lambda side, items: raw_pipelined(side.nc, items, timeout),
                        lambda side: shoal_pipelined(side.bus, args.events),
                    ),
                    *await compare(
                        f"sequential ({args.sequential} events, await each ack)",
                        args.rounds,
                        args.sequential,
                        sides,
                        lambda side, items: raw_sequential(side.nc, items, timeout),
                        lambda side: shoal_sequential(side.bus, args.sequential),
                    ),
                ]
                report(results, args.rounds)
                breakdown(on.bus, args.events)
                if args.profile:
                    await on.admin.js.purge_stream(on.admin.topology.events.name)
                    await profile(on.bus, args.events)
        finally:
            server.stop()
            open_server.stop()


def report(results: list[Result], rounds: int) -> None:
    print(f"JetStream publish, nats-server R1 file store; median of {rounds} interleaved rounds")
    print("auth on: shoal's embedded server (JWT), publishing with one instance's scoped creds")
    print(
        f"{'side, mode':<62} {'raw nats-py':>12} {'shoal':>12} {'shoal/raw':>9}"
        f" {'shoal CPU':>10} {'server CPU':>11}"
    )
    for r in results:
        print(
            f"{r.side + ', ' + r.mode:<62} {r.raw.rate:>10,.0f}/s {r.shoal.rate:>10,.0f}/s"
            f" {r.shoal.rate / r.raw.rate:>9.0%}"
            f" {r.shoal.cpu_us:>7.1f} us {r.server_us:>8.1f} us"
        )
    by = {(r.side, r.mode): r for r in results}
    for mode in dict.fromkeys(r.mode for r in results):
        a, b = by[("auth off", mode)], by[("auth on", mode)]
        print(
            f"auth on / off, {mode}: shoal rate {b.shoal.rate / a.shoal.rate:.1%},"
            f" server CPU per event {b.server_us / a.server_us:.1%} (target: within 5%)"
        )
    print("(CPU = CPU time per event: shoal's = this process, server = the nats-server's)")


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
