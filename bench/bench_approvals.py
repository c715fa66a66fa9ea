"""Benchmark: a high-risk call's approval round trip, excluding the human.

An in-process agent instance handles N tasks whose one tool call a policy puts in the
``high`` tier. An approver watches the approvals bucket (a KV watch, as a console or chat
bridge would) and grants each request the moment it sees it. Measured per call:

- **request → seen**: from the policy's decision to park the call until the approver's
  watch delivers the pending approval;
- **grant → resumed**: from the approver's grant call until the tool runs with the
  reviewed arguments;
- their sum: the whole round trip minus human time. Target p99 < 50 ms.

Ceiling, same run: a raw KV put → watch delivery on the same server.

Run: ``uv run python bench/bench_approvals.py [--calls 50]``. Starts its own nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext
from shoal.agents.tools import ToolEnv, tool
from shoal.bus import Bus, ShoalSettings
from shoal.policy import Approvals, ApprovalState, apply_policy
from shoal.schemas import CloudEvent, TaskAssigned, new_id
from tests.natsproc import NatsProcess

POLICY = '@id("pay-high") @tier("high") permit(principal, action, resource == Tool::"pay");'


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def main(calls: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-approvals-"))
    server = NatsProcess(root / "js").start()
    ran: dict[str, float] = {}
    done: dict[str, asyncio.Event] = {}

    @tool("pay")
    async def pay(env: ToolEnv, ref: str) -> str:
        ran[ref] = time.perf_counter()
        done.setdefault(ref, asyncio.Event()).set()
        return "paid"

    agent = Agent(
        "payer",
        fleet="bench",
        manifest=CapabilityManifest.model_validate({"tools": ["pay"]}),
        tools=[pay],
    )

    @agent.handler("pay")
    async def handle(ctx: TaskContext, task: dict[str, Any]) -> dict[str, str]:
        return {"r": await ctx.tools.call("pay", ref=task["ref"])}

    try:
        settings = ShoalSettings(nats_url=server.url, prefix="bench", data_dir=root / "d")
        async with Bus.connect(server.url, settings, name="bench") as bus:
            await bus.provision()
            await apply_policy(bus, POLICY, fleet="bench", by="bench", reason="bench")
            approvals = await Approvals.open(bus)
            kv = approvals.kv
            seen: list[float] = []
            resumed: list[float] = []
            raw: list[float] = []
            # Ceiling: a raw put -> watch delivery.
            watcher = await kv.watch("raw-probe")
            await watcher.updates(timeout=1)  # type: ignore[no-untyped-call]  # initial marker
            for _ in range(calls):
                t = time.perf_counter()
                await kv.put("raw-probe", b"x")
                await watcher.updates(timeout=5)  # type: ignore[no-untyped-call]
                raw.append(time.perf_counter() - t)
            await watcher.stop()  # type: ignore[no-untyped-call]
            await kv.purge("raw-probe")

            all_watch = await kv.watchall()
            async with AgentRuntime(bus, agent, instance="payer-1").running():
                async for entry in all_watch:
                    if entry is None:
                        break
                for n in range(calls):
                    ref = f"r{n}"
                    task = CloudEvent.new(
                        TaskAssigned(capability="pay", input={"ref": ref}),
                        iid=new_id(),
                        principal="bench",
                        source="shoal://cli/bench",
                    )
                    await bus.record(task, bus.subjects.tasks("bench", "pay"))
                    while True:
                        entry = await all_watch.updates(timeout=10)  # type: ignore[no-untyped-call]
                        if entry is None or entry.value is None:
                            continue
                        state = ApprovalState.model_validate_json(entry.value)
                        if state.state == "pending" and state.iid == task.iid:
                            break
                    # Wall clock on both sides (the request's time is the instance's utcnow).
                    seen.append(time.time() - state.requested_at.timestamp())
                    granted = time.perf_counter()
                    await approvals.decide(state.id, grant=True, by="bench", reason="")
                    await asyncio.wait_for(done.setdefault(ref, asyncio.Event()).wait(), 10)
                    resumed.append(ran[ref] - granted)
            await all_watch.stop()  # type: ignore[no-untyped-call]
        ms = 1000.0
        print(f"{calls} approvals, in-process instance, one nats-server (2-core machine)")
        total = [a + b for a, b in zip(seen, resumed, strict=True)]
        print(
            f"request -> approver sees: p50 {statistics.median(seen) * ms:6.2f} ms, "
            f"p99 {pct(seen, 0.99) * ms:6.2f} ms"
        )
        print(
            f"request + grant -> resumed, minus human time: p50 "
            f"{statistics.median(total) * ms:6.2f} ms, p99 {pct(total, 0.99) * ms:6.2f} ms"
        )
        print(
            f"grant -> resumed call:   p50 {statistics.median(resumed) * ms:6.2f} ms, "
            f"p99 {pct(resumed, 0.99) * ms:6.2f} ms"
        )
        print(
            f"raw KV put -> watch:     p50 {statistics.median(raw) * ms:6.2f} ms, "
            f"p99 {pct(raw, 0.99) * ms:6.2f} ms (ceiling, same run)"
        )
        print("target: requested -> grant -> resumed, excluding human time, p99 < 50 ms")
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.calls))
