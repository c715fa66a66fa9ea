"""Benchmark: what ``sync_interval: always`` costs the embedded server's publish throughput.

Two embedded servers (``shoal.ops.server.EmbeddedServer``), started side by side in the same
run with the same workload, differing only in ``ShoalSettings.sync_interval``:

* default (unset): the nats-server default, fsync every 2 minutes. An acknowledged event
  can sit in the OS page cache only, so an OS crash or power loss can lose it;
* ``always``: fsync every write before the ack.

Each round publishes shoal events (``Bus.publish_many``, many acks in flight, and
``Bus.publish``, awaiting each ack) to each server in turn; medians are printed side by side.

Run: ``uv run python bench/bench_sync.py`` (``--dir`` puts the stores on another disk; the
figures depend on the disk's fsync latency, so the filesystem is printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench_publish import model_called

from shoal.bus import Bus, ShoalSettings
from shoal.ops.server import EmbeddedServer

POLICIES = {"default (2m)": None, "always": "always"}


@dataclass
class Rates:
    """Events per second of each round, per mode."""

    pipelined: list[float] = field(default_factory=list)
    sequential: list[float] = field(default_factory=list)


@asynccontextmanager
async def embedded(root: Path, sync_interval: str | None) -> AsyncIterator[Bus]:
    """An embedded server with this fsync policy, and a provisioned Bus on it."""
    settings = ShoalSettings(
        data_dir=root / (sync_interval or "default"),
        sync_interval=sync_interval,
        prefix="bench",
        request_timeout=30.0,
    )
    server = EmbeddedServer(settings)
    record = server.start()
    try:
        async with Bus.connect(record.url, settings, name="bench-sync") as bus:
            await bus.provision()
            yield bus
    finally:
        server.stop()


async def rate(bus: Bus, count: int, *, pipelined: bool) -> float:
    events = (model_called(n) for n in range(count))
    start = time.perf_counter()
    if pipelined:
        acks = await bus.publish_many(events)
        assert len(acks) == count
    else:
        for event in events:
            await bus.publish(event)
    return count / (time.perf_counter() - start)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-sync-", dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"stores under {root} ({filesystem(root)})")
        async with AsyncExitStack() as stack:
            buses = {
                name: await stack.enter_async_context(embedded(root, policy))
                for name, policy in POLICIES.items()
            }
            for bus in buses.values():  # warm up: connections, inboxes, pydantic
                await rate(bus, 500, pipelined=True)
            rates = {name: Rates() for name in buses}
            for _ in range(args.rounds):
                for name, bus in buses.items():
                    rates[name].pipelined.append(await rate(bus, args.events, pipelined=True))
                    rates[name].sequential.append(await rate(bus, args.sequential, pipelined=False))
        report(rates, args)


def report(rates: dict[str, Rates], args: argparse.Namespace) -> None:
    default, always = (rates[name] for name in POLICIES)
    print(f"shoal publish to the embedded server, R1 file store; median of {args.rounds} rounds")
    print(f"{'mode':<42} {'default (2m)':>14} {'always':>12} {'always/default':>15}")
    for mode, a, b in (
        (f"pipelined ({args.events} events, window 4000)", default.pipelined, always.pipelined),
        (f"sequential ({args.sequential}, await each ack)", default.sequential, always.sequential),
    ):
        slow, fast = statistics.median(b), statistics.median(a)
        print(f"{mode:<42} {fast:>12,.0f}/s {slow:>10,.0f}/s {slow / fast:>15.0%}")


def filesystem(path: Path) -> str:
    """The type and device of the filesystem holding ``path`` (from /proc/mounts)."""
    best = ("", "unknown", "?")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown filesystem"
    resolved = str(path.resolve())
    for line in mounts:
        device, mount, kind = line.split()[:3]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best[0]):
            best = (mount, kind, device)
    return f"{best[1]} on {best[2]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="per pipelined round")
    parser.add_argument("--sequential", type=int, default=1_000, help="per sequential round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the stores go (default: temp dir)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
