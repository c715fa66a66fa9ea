"""Benchmark: fleet scaling and kill-switch time to effect, with real processes.

1. ``fleet scale demo worker=50`` from 0 until 50 instances report presence, then to 0 until
   every presence key and every OS process is gone. One ``shoal supervisor`` process starts
   ``python -m shoal agent run`` children (the demo summarizer). Ceiling, same run: 50 bare
   Python processes that only import nats-py, connect, and put one KV key — the floor for
   any fleet of Python instances on this machine.
2. Kill switch → refused call: the kill key is put, and the time until a gateway's kill
   mirror (the agents' ``KillWatcher``, which every gateway consults before each call)
   holds it, i.e. the next call would be refused. Ceiling: a raw nats-py KV watch seeing
   the same put.
3. Kill switch → process gone: ``kill --instance`` on running instances, time until the
   OS process has exited (instance drain + supervisor SIGTERM), in rounds with ``unkill``.

Run: ``uv run python bench/bench_fleet.py [--instances 50] [--kills 100] [--process-kills 20]``.
Starts its own nats-server in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.agents.killswitch import KillWatcher
from shoal.bus import Bus, KillSwitch, ShoalSettings, kill_key
from shoal.ops.fleets import apply_fleet, fleet_command, kv_snapshot, open_fleet_app
from shoal.ops.instances import bytecode_cache_dir
from shoal.ops.kill import kill, unkill
from shoal.schemas import utcnow
from shoal.schemas.fleet import parse_fleet_spec
from tests.natsproc import NatsProcess
from tests.ops.fleetprocs import agent_procs, process_env

SPEC = """
fleet: demo
rollout: {first_heartbeat_s: 120}
agents:
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    replicas: 0
"""

BARE = """
import asyncio, os, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    kv = await nc.jetstream().key_value(sys.argv[2])
    await kv.put(sys.argv[3], b"up")
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def wait_for(probe, check, timeout: float) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not check(await probe()):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not converged after {timeout:.0f}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def presence_count(bus: Bus) -> int:
    return len(await kv_snapshot(await bus.kv(bus.topology.presence.name)))


async def proc_count(settings: ShoalSettings) -> int:
    return len(agent_procs(settings.prefix))


def cpu_seconds(pid: int) -> float:
    """CPU (user + system) a process has used so far, from ``/proc/PID/stat``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_scale(
    bus: Bus, settings: ShoalSettings, n: int
) -> tuple[float, float, float, list[float]]:
    app = open_fleet_app(settings)
    await apply_fleet(bus, app, parse_fleet_spec(SPEC), by="bench")
    log = (settings.data_dir / "supervisor.log").open("ab")
    sup = subprocess.Popen(  # noqa: ASYNC220 (starting a process is fast; it is not awaited)
        # Admit all n whatever this host's computed capacity: the bench measures start-up.
        [sys.executable, "-m", "shoal", "supervisor", "--id", "bench-sup", "--capacity", str(n)],
        env=process_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await asyncio.sleep(2.0)  # supervisor up and watching
        started = time.monotonic()
        await fleet_command(bus, app, "demo", "scale", by="bench", replicas={"worker": n})
        procs_up = await wait_for(lambda: proc_count(settings), lambda c: c == n, 120)
        await wait_for(lambda: presence_count(bus), lambda c: c == n, 120)
        up = time.monotonic() - started
        # Each instance's CPU so far ≈ its start-up cost (it has just sent its first beat).
        cpu = sorted(cpu_seconds(p.pid) for p in agent_procs(settings.prefix))
        started = time.monotonic()
        await fleet_command(bus, app, "demo", "scale", by="bench", replicas={"worker": 0})
        await wait_for(lambda: presence_count(bus), lambda c: c == 0, 120)
        await wait_for(lambda: proc_count(settings), lambda c: c == 0, 120)
        down = time.monotonic() - started
        return procs_up, up, down, cpu
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(30)
        log.close()
        app.close()


async def bench_bare(bus: Bus, url: str, n: int) -> float:
    bucket = bus.topology.leases.name  # any bucket: keys are written, then purged by TTL
    started = time.monotonic()
    argv = [sys.executable, "-c", BARE, url, bucket]
    procs = [subprocess.Popen([*argv, f"bare.{i}"]) for i in range(n)]  # noqa: ASYNC220
    kv = await bus.kv(bucket)
    try:
        await wait_for(lambda: kv_snapshot(kv, "bare.>"), lambda e: len(e) == n, 120)
        return time.monotonic() - started
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def bench_refused(bus: Bus, kills: int) -> tuple[list[float], list[float]]:
    """Key put → gateway mirror holds it (shoal), and → raw KV watch sees it (ceiling)."""
    watcher = KillWatcher(bus)
    await watcher.start()
    kv = await bus.kv(bus.topology.kill.name)
    raw = await kv.watch("model.>")
    shoal_ms, raw_ms = [], []

    async def raw_seen(key: str) -> float:
        while True:
            entry = await raw.updates(5.0)  # type: ignore[no-untyped-call]
            if entry is not None and entry.key == key and entry.operation is None:
                return time.perf_counter()

    async def shoal_seen(key: str) -> float:
        while watcher.match([key]) is None:  # noqa: ASYNC110 (the gateway's own check)
            await asyncio.sleep(0)
        return time.perf_counter()

    for i in range(kills):
        key = kill_key("model", f"bench-{i}")
        switch = KillSwitch(scope="model", name=f"bench-{i}", by="bench", at=utcnow())
        waiters = asyncio.gather(raw_seen(key), shoal_seen(key))
        await asyncio.sleep(0)
        started = time.perf_counter()
        await kv.put(key, switch.model_dump_json().encode())
        raw_at, shoal_at = await asyncio.wait_for(waiters, 10)
        shoal_ms.append((shoal_at - started) * 1000)
        raw_ms.append((raw_at - started) * 1000)
        await kv.delete(key)
    await raw.stop()  # type: ignore[no-untyped-call]
    await watcher.stop()
    return shoal_ms, raw_ms


async def bench_process_gone(
    bus: Bus, settings: ShoalSettings, total: int, per_round: int
) -> list[float]:
    app = open_fleet_app(settings)
    log = (settings.data_dir / "supervisor.log").open("ab")
    sup = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "shoal", "supervisor", "--id", "bench-kill"],
        env=process_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    gone_ms: list[float] = []
    try:
        await fleet_command(bus, app, "demo", "scale", by="bench", replicas={"worker": per_round})
        while len(gone_ms) < total:
            await wait_for(lambda: presence_count(bus), lambda c: c == per_round, 120)
            victims = agent_procs(settings.prefix)[: min(per_round, total - len(gone_ms))]
            for v in victims:
                started = time.perf_counter()
                await kill(bus, "instance", v.instance, by="bench")
                while _alive(v.pid):  # noqa: ASYNC110 (no event tells a process exited)
                    await asyncio.sleep(0.002)
                gone_ms.append((time.perf_counter() - started) * 1000)
            for v in victims:
                await unkill(bus, "instance", v.instance, by="bench")
        await fleet_command(bus, app, "demo", "scale", by="bench", replicas={"worker": 0})
        await wait_for(lambda: proc_count(settings), lambda c: c == 0, 60)
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(30)
        log.close()
        app.close()
    return gone_ms


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def bytecode_note() -> str:
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "the usual __pycache__"
    return f"{bytecode_cache_dir(dict(os.environ))} (PYTHONDONTWRITEBYTECODE is set)"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--process-kills", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsProcess(Path(tmp) / "js").start()
        settings = ShoalSettings(
            nats_url=server.url, prefix="bench", data_dir=Path(tmp) / "data", principal="bench"
        )
        try:
            async with Bus.connect(server.url, settings, name="bench") as bus:
                await bus.provision()
                n = args.instances
                procs_up, up, down, cpu = await bench_scale(bus, settings, n)
                bare = await bench_bare(bus, server.url, n)
                print(f"scale 0->{n}: {n} processes in {procs_up:.1f}s, all present in {up:.1f}s")
                print(f"  ceiling: {n} bare nats-py processes connected+put in {bare:.1f}s")
                print(f"  ratio: {up / bare:.1f}x   (target < 15 s)")
                print(
                    f"  CPU per instance when all were present: median {statistics.median(cpu):.2f}"
                    f" s, max {cpu[-1]:.2f} s; bytecode cache: {bytecode_note()}"
                )
                print(f"scale {n}->0: all presence and processes gone in {down:.1f}s")
                shoal_ms, raw_ms = await bench_refused(bus, args.kills)
                print(
                    f"kill -> next call refused ({args.kills} kills): "
                    f"p50 {statistics.median(shoal_ms):.2f} ms, p99 {pct(shoal_ms, 0.99):.2f} ms"
                    "   (target p99 < 100 ms)"
                )
                print(
                    f"  ceiling (raw KV watch): p50 {statistics.median(raw_ms):.2f} ms, "
                    f"p99 {pct(raw_ms, 0.99):.2f} ms; ratio p50 "
                    f"{statistics.median(shoal_ms) / statistics.median(raw_ms):.2f}x"
                )
                gone = await bench_process_gone(bus, settings, args.process_kills, 10)
                print(
                    f"kill --instance -> process gone ({len(gone)} kills): "
                    f"p50 {statistics.median(gone):.0f} ms, p99 {pct(gone, 0.99):.0f} ms"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
