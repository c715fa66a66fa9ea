"""Benchmark: tasks/s through one fleet with tracing off and on, in the same run.

Each task is a realistic small agent step: the handler makes one tool call and one model call
(offline model), so a traced task is three spans — ``invoke_agent``, ``execute_tool``,
``chat`` — plus the GenAI metrics, and its four events (``task.started``, ``tool.called``,
``model.called``, ``task.completed``) carry ``traceparent``. Tracing *on* is the default
configuration: the SDK's batch span processor writing the local JSON-lines span file; *off*
is ``OTEL_SDK_DISABLED=true``; *sampled* is *on* with ``OTEL_TRACES_SAMPLER`` keeping one
trace in ten (the operator's knob; reported beside the target, not as it); *spans only* is
the floor of the SDK: its spans and trace context, no metrics, nothing exported; *SDK
histograms* is *on* with the GenAI histograms recorded by the SDK's synchronous instruments,
as before :mod:`shoal.bus.histograms` (the same metrics, the previous cost).

Besides tasks/s, each mode's CPU seconds per task (the process's, over the timed window):
on a loaded machine wall-clock rates follow the scheduler, CPU per task much less so.

Workloads: the step with a model that answers at once and a ``noop`` handler (one span):
CPU-bound, the target's measure; and the step against a model taking 20 ms.

Per round: N tasks pre-loaded on the work queue, K in-process instances (concurrency 16)
held by a fleet kill switch until all have started, then timed from lifting the switch to
the N-th ``task.completed``. Rounds alternate the modes so drift hits all; medians.

Run: ``uv run python bench/bench_tracing.py [--tasks N] [--rounds R]``. Starts its own
nats-server. Target: on >= 85% of off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

from opentelemetry import metrics
from opentelemetry.sdk.trace import TracerProvider

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
from shoal.bus.histograms import SdkHistograms
from shoal.bus.spanfile import read_spans
from shoal.bus.telemetry import INSTRUMENTATION_SCOPE, Telemetry, setup_telemetry, spans_path
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
    url: str, settings: ShoalSettings, n: int, instances: int, g: GenAI, workload: Workload
) -> tuple[float, float]:
    """Tasks/s and CPU seconds per task for one round on a fresh prefix (its own streams)."""
    settings = settings.model_copy(update={"prefix": "b" + new_id()[-8:].lower()})
    make, latency_s = workload

    def runtime(bus: Bus) -> AgentRuntime:
        return AgentRuntime(
            bus,
            make(),
            concurrency=16,
            drain_timeout_s=2,
            model_clients=[OfflineModelClient(latency_s=latency_s)],
            genai=g,
        )

    elapsed, cpu = await fleet_round(url, settings, n, instances, runtime, CAPABILITY)
    return n / elapsed, cpu / n


Workload = tuple[AgentFactory, float]
"""An agent and its model's simulated latency (seconds)."""

WORKLOADS: dict[str, tuple[Workload, int]] = {
    # name: ((agent, model latency), spans a task)
    "step (tool + model)": ((step_agent, 0.0), 3),
    "noop": ((noop_agent, 0.0), 1),
    "step, model 20 ms": ((step_agent, 0.02), 3),
}
"""The first two are the target's measure (CPU-bound: the model answers at once); the third
shows the same step against a model that takes 20 ms, as a fast hosted model would."""

SAMPLE_RATIO = 0.1


def sampled_telemetry(settings: ShoalSettings) -> Telemetry:
    """Tracing on with head sampling, configured as an operator would: through the SDK's own
    ``OTEL_TRACES_SAMPLER`` variables (a new task's trace is kept with probability 0.1)."""
    env = {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(SAMPLE_RATIO),
    }
    with patch.dict(os.environ, env):  # the SDK reads them as the provider is built
        return setup_telemetry(settings, "shoal-bench", install_global=False)


def sdk_histograms(settings: ShoalSettings) -> Telemetry:
    """Tracing on, with the GenAI histograms on the SDK's synchronous instruments."""
    telemetry = setup_telemetry(settings, "shoal-bench", install_global=False)
    telemetry.histograms = SdkHistograms(telemetry.meter)
    return telemetry


def spans_only() -> Telemetry:
    """The floor of tracing with the SDK: spans and trace context only, no metrics, and no
    span processor, so no span is queued, serialized or written."""
    provider = TracerProvider()
    return Telemetry(
        "shoal-bench",
        provider.get_tracer(INSTRUMENTATION_SCOPE),
        metrics.NoOpMeter(INSTRUMENTATION_SCOPE),
        tracer_provider=provider,
    )


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
            sampled_settings = base.model_copy(update={"data_dir": Path(tmp) / "sampled"})
            sdk_settings = base.model_copy(update={"data_dir": Path(tmp) / "sdk"})
            with (
                setup_telemetry(base, "shoal-bench", install_global=False) as on_tel,
                sampled_telemetry(sampled_settings) as sampled_tel,
                sdk_histograms(sdk_settings) as sdk_tel,
            ):
                modes = {
                    "off": GenAI(Telemetry.disabled("shoal-bench")),
                    "on": GenAI(on_tel),
                    "sampled": GenAI(sampled_tel),
                    "spans": GenAI(spans_only()),
                    "sdk-hist": GenAI(sdk_tel),
                }
                await throughput(server.url, base, 500, instances, modes["on"], (step_agent, 0))
                for name, (workload, _) in WORKLOADS.items():
                    runs = results[name] = {mode: [] for mode in modes}
                    for _ in range(rounds):
                        for mode, g in modes.items():
                            runs[mode].append(
                                await throughput(server.url, base, n, instances, g, workload)
                            )
                        print(
                            f"  {name}: "
                            + ", ".join(f"{m} {runs[m][-1][0]:6.0f} tasks/s" for m in modes)
                        )
            spans = sum(1 for _ in read_spans(spans_path(base)))
            sampled = sum(1 for _ in read_spans(spans_path(sampled_settings)))
            sdk_spans = sum(1 for _ in read_spans(spans_path(sdk_settings)))
        finally:
            server.stop()
    print(
        f"\n{n} tasks a round, {instances} instances x 16 in one process, {rounds} rounds; medians"
    )
    header: tuple[str, ...] = ("workload", "off tasks/s", "on tasks/s", "on/off")
    header += ("sampled 10%", "/off")
    header += ("spans only", "/off", "SDK hist.", "/off")
    print("{:22} {:>12} {:>11} {:>7} {:>12} {:>5} {:>11} {:>5} {:>10} {:>5}".format(*header))
    cpus: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        rate = {m: statistics.median(r for r, _ in runs[m]) for m in runs}
        cpus[name] = {m: statistics.median(c for _, c in runs[m]) * 1e6 for m in runs}
        print(
            f"{name:22} {rate['off']:12.0f} {rate['on']:11.0f} {rate['on'] / rate['off']:7.0%} "
            f"{rate['sampled']:12.0f} {rate['sampled'] / rate['off']:5.0%} "
            f"{rate['spans']:11.0f} {rate['spans'] / rate['off']:5.0%} "
            f"{rate['sdk-hist']:10.0f} {rate['sdk-hist'] / rate['off']:5.0%}"
        )
    print(
        "\nCPU per task (µs), and off's CPU over each mode's (the rate a CPU-bound core would get)"
    )
    header = (
        "workload",
        "off",
        "on",
        "off/on",
        "sampled",
        "/",
        "spans only",
        "/",
        "SDK hist.",
        "/",
    )
    print("{:22} {:>6} {:>6} {:>7} {:>8} {:>5} {:>11} {:>5} {:>10} {:>5}".format(*header))
    for name, cpu in cpus.items():
        print(
            f"{name:22} {cpu['off']:6.0f} {cpu['on']:6.0f} {cpu['off'] / cpu['on']:7.0%} "
            f"{cpu['sampled']:8.0f} {cpu['off'] / cpu['sampled']:5.0%} "
            f"{cpu['spans']:11.0f} {cpu['off'] / cpu['spans']:5.0%} "
            f"{cpu['sdk-hist']:10.0f} {cpu['off'] / cpu['sdk-hist']:5.0%}"
        )
    print("target: on >= 85% of off for the CPU-bound rows (tracing on = batch span processor")
    print("+ local span file); 'sampled' keeps 10% of traces (OTEL_TRACES_SAMPLER); 'spans only'")
    print("is the SDK's spans and trace context with nothing exported and no metrics (the floor);")
    print("'SDK hist.' is 'on' with the GenAI histograms on the SDK's synchronous instruments")
    expected = 500 * 3 + rounds * n * sum(per_task for _, per_task in WORKLOADS.values())
    print(f"spans written: {spans} (expected {expected}); sampled run: {sampled} spans")
    print(f"SDK hist. run: {sdk_spans} spans (expected {expected - 500 * 3})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=3, help="off/on round pairs")
    parser.add_argument("--instances", type=int, default=2, help="agent instances")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.rounds, args.instances))
