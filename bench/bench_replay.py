"""Benchmark: replay of a 10,000-event session, and loading it from the core's store.

One session (IID) of N events — model calls, tool calls and policy decisions of a long
agent run — is published, then:

1. ``replay`` as ``shoal session replay`` does it (:func:`fold_replay`): read the session's
   events from JetStream by subject filter and, in the same pass, validate each CloudEvent,
   fold it into a fresh Session aggregate and write its timeline line. Ceiling, same run:
   the same read with nats-py alone (the same ordered push consumer on the same subject
   filter, no parsing) — the time just to get the bytes. Raw and replay alternate
   ``--rounds`` times; the medians are compared (the machine is shared).
2. The session ingested by the core, then loaded from the SQLite store through the
   repository (a snapshot every 200 events, then the tail) — what ``session show`` costs.

Run: ``uv run python bench/bench_replay.py [--events 1000,10000,100000] [--profile]``.
Targets: replay < 1 s and <= 2x the raw read at 10k events, the ratio not growing with the
size. ``--profile`` prints cProfile's top functions of one replay.
Starts its own nats-server in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from nats.aio.msg import Msg

from shoal.aggregates import PriceTable, open_core, run_core
from shoal.aggregates.replay import fold_replay
from shoal.bus import Bus, ShoalSettings
from shoal.schemas import PolicyDecided
from tests.aggregates.eventmix import Mix, publish_all
from tests.natsproc import NatsProcess

IID = "s-long"


def long_session(events: int) -> Mix:
    """One running session with ``events`` events: calls in a 3:2:1 model/tool/policy mix."""
    mix = Mix(seed=3)
    mix.start_agents()
    n = 0
    while len(mix.events) < events:
        n += 1
        if n % 3 == 0:
            mix.tool_call(IID, None, {"path": f"doc{n}.md"})
        elif n % 6 == 1:
            decision = PolicyDecided(action="tool.call", target="shell", decision="deny", rule="m")
            mix.emit(decision, iid=IID, gid=None, by=mix.worker)
        else:
            mix.model_call(IID, None, mix.worker)
    return mix


async def raw_read(bus: Bus) -> tuple[float, int]:
    """Seconds to receive every message of the session with nats-py only (no parsing)."""
    started = time.perf_counter()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen = 0

    async def count(msg: Msg) -> None:
        nonlocal seen
        seen += 1
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(None)

    sub = await bus.js.subscribe(
        bus.subjects.session_events(IID),
        stream=bus.topology.events.name,
        ordered_consumer=True,
        cb=count,
    )
    await asyncio.wait_for(done, 60)
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return elapsed, seen


async def main(sizes: list[int], rounds: int, profile: bool) -> None:
    for events in sizes:
        await one_size(events, rounds, profile)


async def one_size(events: int, rounds: int, profile: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-replay-"))
    server = NatsProcess(root / "js").start()
    try:
        settings = ShoalSettings(nats_url=server.url, prefix="bench", data_dir=root / "data")
        mix = long_session(events)
        prices = PriceTable.load()
        async with Bus.connect(server.url, settings, name="bench") as bus:
            await bus.provision()
            await publish_all(bus, mix.events, chunk=5000)
            raws: list[float] = []
            replays: list[float] = []
            raw_cpu: list[float] = []
            replay_cpu: list[float] = []
            for _ in range(rounds):
                cpu = time.process_time()
                raw_s, raw_n = await raw_read(bus)
                raw_cpu.append(time.process_time() - cpu)
                raws.append(raw_s)
                cpu, started = time.process_time(), time.perf_counter()
                replay = (await fold_replay(bus, IID, prices)).replay(IID)
                replays.append(time.perf_counter() - started)
                replay_cpu.append(time.process_time() - cpu)
            if profile:
                await profiled(bus, prices)
        await run_core(settings, server.url, asyncio.Event(), until_idle=True)
        app = open_core(settings)
        started = time.perf_counter()
        session = app.session(IID)
        load_s = time.perf_counter() - started
        app.close()
        raw_s, replay_s = statistics.median(raws), statistics.median(replays)
        n = replay.events
        print(f"session {IID}: {n} events ({raw_n} read raw), median of {rounds} rounds")
        print(f"raw nats-py read of the session (ceiling):   {raw_s * 1000:8.1f} ms")
        print(
            f"shoal replay: read + validate + fold, 1 pass {replay_s * 1000:8.1f} ms"
            " (target < 1000 at 10k)"
        )
        print(f"ratio: replay takes {replay_s / raw_s:.2f}x the raw read (target <= 2)")
        raw_c, replay_c = statistics.median(raw_cpu), statistics.median(replay_cpu)
        print(
            f"reader's CPU: raw {raw_c * 1000:.0f} ms, replay {replay_c * 1000:.0f} ms:"
            f" {replay_c / raw_c:.2f}x ({(replay_c - raw_c) / n * 1e6:.1f} us an event"
            " on top of the read)"
        )
        print(f"load from the core's store (snapshot+tail): {load_s * 1000:8.1f} ms")
        same = replay.root.session.cost_usd == session.cost_usd == mix.cost
        print(
            f"check: replayed cost ${replay.root.session.cost_usd} == stored == generated: {same}"
        )
    finally:
        server.stop()


async def profiled(bus: Bus, prices: PriceTable) -> None:
    """One replay under cProfile: its top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    (await fold_replay(bus, IID, prices)).replay(IID)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="1000,10000,100000", help="session sizes")
    parser.add_argument("--rounds", type=int, default=3, help="raw/replay pairs per size")
    parser.add_argument("--profile", action="store_true", help="cProfile one replay")
    args = parser.parse_args()
    sizes = [int(n) for n in args.events.split(",") if n]
    asyncio.run(main(sizes, max(args.rounds, 1), args.profile))
