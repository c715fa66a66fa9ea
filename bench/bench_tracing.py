"""Benchmark: tasks/s through one fleet with tracing off and on, in the same run.

Each task is a realistic small agent step: the handler makes one model call (offline model,
no simulated latency) and one tool call, so a traced task is four spans' worth of work —
``invoke_agent``, ``chat``, ``execute_tool`` — plus the GenAI metrics, and its four events
(``task.started``, ``tool.called``, ``model.called``, ``task.completed``) carry
``traceparent``. Tracing *on* is the default configuration: the SDK's batch span processor
writing the local JSON-lines span file; *off* is ``OTEL_SDK_DISABLED=true``.

Per round: N tasks pre-loaded on the work queue, K in-process instances (concurrency 16)
held by a fleet kill switch until all have started, then timed from lifting the switch to
the N-th ``task.completed``. Rounds alternate off/on so drift hits both; medians reported.

Run: ``uv run python bench/bench_tracing.py [--tasks N] [--rounds R]``. Starts its own
nats-server. Target: on >= 85% of off.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bench_tasks import fleet_round
from shoal.agents import (
    Agent,
    AgentRuntime,
    CapabilityManifest,
    OfflineModelClient,
    TaskContext,
    ToolEnv,
    ToolGrant,
    tool,
)
from shoal.bus import Bus, ShoalSettings
from shoal.bus.genai import GenAI
from shoal.bus.spanfile import read_spans
from shoal.bus.telemetry import Telemetry, setup_telemetry, spans_path
from shoal.schemas import new_id
from tests.natsproc import NatsProcess

FLEET, CAPABILITY = "bench", "step"


@tool("lookup")
async def lookup(env: ToolEnv, key: str) -> str:
    """A trivial tool: what the handler looks up before asking the model."""
    return f"value of {key}"


AgentFactory = Callable[[], Agent]


def noop_agent() -> Agent:
    """The floor: a handler that does nothing, so a task is one ``invoke_agent`` span."""
    agent = Agent("nooper", fleet=FLEET, manifest=CapabilityManifest())

    @agent.handler(CAPABILITY)
    async def step(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        return {}

    return agent


def step_agent() -> Agent:
    """A small agent step: one tool call, one model call (three spans a task)."""
    manifest = CapabilityManifest(
        models=("offline-small",), tools={"lookup": ToolGrant(sensitivity="internal")}
    )
    agent = Agent("stepper", fleet=FLEET, manifest=manifest, tools=[lookup])

    @agent.handler(CAPABILITY)
    async def step(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        fact = await ctx.tools.call("lookup", key=str(task["n"]))
        answer = await ctx.model.complete(f"Summarise: {fact}", max_tokens=32)
        return {"answer": answer.text}

    return agent


async def throughput(
    url: str, settings: ShoalSettings, n: int, instances: int, g: GenAI, make: AgentFactory
) -> tuple[float, float]:
    """Tasks/s and CPU seconds per task for one round on a fresh prefix (its own streams)."""
    settings = settings.model_copy(update={"prefix": "b" + new_id()[-8:].lower()})

    def runtime(bus: Bus) -> AgentRuntime:
        return AgentRuntime(
            bus,
            make(),
            concurrency=16,
            drain_timeout_s=2,
            model_clients=[OfflineModelClient()],
            genai=g,
        )

    elapsed, cpu = await fleet_round(url, settings, n, instances, runtime, CAPABILITY)
    return n / elapsed, cpu / n


WORKLOADS: dict[str, AgentFactory] = {"step (tool + model)": step_agent, "noop": noop_agent}


async def main(n: int, rounds: int, instances: int) -> None:
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsProcess(Path(tmp) / "js").start()
        try:
            base = ShoalSettings(
                nats_url=server.url,
                data_dir=Path(tmp) / "data",
                otel_sdk_disabled=False,
                otel_endpoint=None,
                otel_traces_endpoint=None,
                otel_metrics_endpoint=None,
            )
            with setup_telemetry(base, "shoal-bench", install_global=False) as on_tel:
                modes = {"off": GenAI(Telemetry.disabled("shoal-bench")), "on": GenAI(on_tel)}
                await throughput(server.url, base, 500, instances, modes["on"], step_agent)
                for workload, make in WORKLOADS.items():
                    runs = results[workload] = {"off": [], "on": []}
                    for _ in range(rounds):
                        for mode, g in modes.items():
                            runs[mode].append(
                                await throughput(server.url, base, n, instances, g, make)
                            )
                        print(
                            f"  {workload}: off {runs['off'][-1][0]:6.0f} tasks/s, "
                            f"on {runs['on'][-1][0]:6.0f} tasks/s"
                        )
            spans = sum(1 for _ in read_spans(spans_path(base)))
        finally:
            server.stop()
    print(
        f"\n{n} tasks a round, {instances} instances x 16 in one process, {rounds} rounds; medians"
    )
    header = ("workload", "off tasks/s", "on tasks/s", "on/off", "CPU/task off", "on")
    print("{:22} {:>12} {:>11} {:>7} {:>13} {:>7}".format(*header))
    for workload, runs in results.items():
        off = statistics.median(r for r, _ in runs["off"])
        on = statistics.median(r for r, _ in runs["on"])
        cpu_off = statistics.median(c for _, c in runs["off"]) * 1e6
        cpu_on = statistics.median(c for _, c in runs["on"]) * 1e6
        print(
            f"{workload:22} {off:12.0f} {on:11.0f} {on / off:7.0%} "
            f"{cpu_off:10.0f} us {cpu_on:4.0f} us"
        )
    print("target: on >= 85% of off (tracing on = batch span processor + local span file)")
    expected = 500 * 3 + rounds * n * 4  # 3 spans a step task, 1 a noop task
    print(f"spans written: {spans} (expected {expected})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=3, help="off/on round pairs")
    parser.add_argument("--instances", type=int, default=2, help="agent instances")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.rounds, args.instances))
