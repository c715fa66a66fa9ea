"""Benchmark: kill switch → in-flight handler cancelled, and → its task settled.

One instance (in-process runtime) runs a runaway handler: it catches ``Killed`` and keeps
calling a model (a 2 ms stand-in endpoint) and a tool, in a loop. An operator on its own
connection sets a kill key with ``shoal.ops.kill.kill`` (the CLI's path: key put, then the
audit events) while the handler runs, and the bench records

- **cancelled**: from just before the kill key is put until the handler sees its
  ``CancelledError`` (same process, same clock);
- **settled**: until the runtime's ``task.failed`` (``Killed``) for the task reaches the
  operator's subscription (the delivery is termed or nak'ed right after it);
- the **ceiling**: until a raw nats-py KV watch on the operator's side sees the same put
  (the propagation floor any watcher has to wait for).

Two kinds of kill, ``--kills`` of each: ``session.<iid>`` (fails the task finally) and
``fleet.<name>`` (releases it; lifted again before the next round).

Run: ``uv run python bench/bench_kill.py [--kills 50]``. Starts its own nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, Killed, TaskContext
from shoal.agents.tools import ToolEnv, tool
from shoal.bus import Bus, KillScope, ShoalSettings, kill_key
from shoal.ops.kill import kill, unkill
from shoal.schemas import CloudEvent, TaskAssigned, TaskFailed, new_id, parse_event
from tests.agents.workers import CountingModel
from tests.natsproc import NatsProcess

FLEET = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Runaway:
    calls: int = 0
    cancelled_at: dict[str, float] = field(default_factory=dict)
    running: dict[str, asyncio.Event] = field(default_factory=dict)

    def agent(self) -> Agent:
        @tool("probe")
        async def probe(env: ToolEnv) -> str:
            return "pong"

        manifest = CapabilityManifest(models=("offline-small",), tools=("probe",))
        agent = Agent("runaway", fleet=FLEET, manifest=manifest, tools=[probe])

        @agent.handler("spin")
        async def spin(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
            if ctx.attempt > 1:
                return {}  # a released task, run again after the unkill: done at once
            try:
                while True:
                    try:
                        await ctx.model.complete("hello")
                        await ctx.tools.call("probe")
                        self.calls += 1
                        self.running.setdefault(ctx.iid, asyncio.Event()).set()
                    except Killed:
                        pass
            except asyncio.CancelledError:
                self.cancelled_at[ctx.iid] = time.perf_counter()
                raise

        return agent


async def one_kill(
    operator: Bus, runaway: Runaway, scope: KillScope, failed: dict[str, float]
) -> tuple[float, float, float]:
    bus = operator
    event = CloudEvent.new(
        TaskAssigned(capability="spin"), iid=new_id(), source="shoal://cli/bench"
    )
    running = runaway.running.setdefault(event.iid, asyncio.Event())
    await bus.record(event, bus.subjects.tasks(FLEET, "spin"))
    await asyncio.wait_for(running.wait(), 10)
    kv = await bus.kv(bus.topology.kill.name)
    name = event.iid if scope == "session" else FLEET
    raw = await kv.watch(kill_key(scope, name))
    started = time.perf_counter()
    killing = asyncio.create_task(kill(bus, scope, name, by="bench", reason="bench"))
    entry = None
    while entry is None:  # None: the marker that the (empty) initial values are done
        entry = await raw.updates(5.0)  # type: ignore[no-untyped-call]
    seen = time.perf_counter()
    await killing
    deadline = time.monotonic() + 10
    while event.iid not in failed or event.iid not in runaway.cancelled_at:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {event.iid} not interrupted")
        await asyncio.sleep(0.001)
    await raw.stop()  # type: ignore[no-untyped-call]
    if scope == "fleet":
        await unkill(bus, "fleet", FLEET, by="bench")
    ms = 1000.0
    return (
        (runaway.cancelled_at[event.iid] - started) * ms,
        (failed[event.iid] - started) * ms,
        (seen - started) * ms,
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsProcess(Path(tmp) / "js").start()
        settings = ShoalSettings(
            nats_url=server.url, prefix="bench", data_dir=Path(tmp) / "data", principal="bench"
        )
        try:
            async with (
                Bus.connect(server.url, settings, name="bench-agent") as bus,
                Bus.connect(server.url, settings, name="bench-operator") as operator,
            ):
                await bus.provision()
                failed: dict[str, float] = {}

                async def on_event(msg: Msg) -> None:
                    ev = parse_event(msg.data)
                    if isinstance(ev.data, TaskFailed) and ev.data.error_type == "Killed":
                        failed.setdefault(ev.iid, time.perf_counter())

                sub = await operator.nc.subscribe(
                    operator.subjects.events_filter(short_type="task.failed"), cb=on_event
                )
                runaway = Runaway()
                runtime = AgentRuntime(bus, runaway.agent(), model_clients=[CountingModel()])
                async with runtime.running():
                    for scope in ("session", "fleet"):
                        rounds = [
                            await one_kill(operator, runaway, scope, failed)
                            for _ in range(args.kills)
                        ]
                        report(scope, rounds)
                await sub.unsubscribe()
        finally:
            server.stop()


def report(scope: str, rounds: list[tuple[float, float, float]]) -> None:
    cancelled, settled, ceiling = ([r[i] for r in rounds] for i in range(3))
    verb = "failed finally" if scope == "session" else "released"
    print(f"kill {scope}.<...> while a runaway handler runs ({len(rounds)} kills):")
    print(
        f"  -> handler cancelled: p50 {statistics.median(cancelled):.2f} ms, "
        f"p99 {pct(cancelled, 0.99):.2f} ms   (target p99 < 100 ms)"
    )
    print(
        f"  -> task {verb} (task.failed seen by the operator): "
        f"p50 {statistics.median(settled):.2f} ms, p99 {pct(settled, 0.99):.2f} ms"
    )
    print(
        f"  ceiling (raw KV watch sees the put): p50 {statistics.median(ceiling):.2f} ms, "
        f"p99 {pct(ceiling, 0.99):.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
