"""Benchmark: CPU per task of the GenAI spans and metrics alone, by tracing mode, in one run.

Where ``bench_tracing`` times a whole fleet (NATS, events, the runtime), this times only what
tracing adds to a step task, in a tight loop with no I/O: one ``invoke_agent`` span around an
``execute_tool`` (policy decision, arguments, result) and a ``chat`` (provider, response with
token usage and cost), exactly the calls ``shoal.agents.gateways`` makes. A round is N tasks
and then a flush of the span processor (so the export thread's serialization is inside the
round); the figure is the process CPU time (every thread) over the round, per task.

Modes: *off* (``GenAI.disabled()``); *spans only* (the SDK's tracer, no span processor, no
metrics: the floor); *on* (the default configuration: batch span processor, local span file,
the GenAI histograms aggregated in Python); *SDK histograms* (*on* with the histograms on the
SDK's synchronous instruments, as before ``shoal.bus.histograms``). Rounds alternate the
modes; each mode's minimum over the rounds is reported (the least disturbed round: on a
shared machine the minimum is the stable statistic), with the median beside it.

Run: ``uv run python bench/bench_genai.py [--tasks N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.bench_tracing import sdk_histograms, spans_only
from shoal.bus import ShoalSettings
from shoal.bus.genai import GenAI, session_attributes
from shoal.bus.telemetry import Telemetry, setup_telemetry

SESSION = session_attributes(
    iid="01M7ZANHPPKP1GSFQE1SHTBX8R",
    fleet="bench",
    agent="stepper",
    instance="01M7ZANHPPKP1GSFQE1SHTBX8S",
    gid="01M7ZANHPPKP1GSFQE1SHTBX8T",
    principal="alice",
)


def task(genai: GenAI, n: int) -> None:
    """The GenAI calls of one step task (one tool call, one model call)."""
    with genai.invoke_agent("stepper", SESSION, capability="step", attempt=1):
        with genai.execute_tool("lookup", SESSION, call_id=f"call-{n}") as tool:
            tool.decided("allow")
            tool.arguments({"key": str(n)})
            tool.result(f"value of {n}", "internal")
        with genai.chat("offline-small", SESSION) as chat:
            chat.provider("offline")
            chat.decided("allow")
            chat.response(
                model="offline-small", input_tokens=12, output_tokens=32, finish_reason="stop"
            )


def one_round(genai: GenAI, telemetry: Telemetry, n: int) -> float:
    """CPU seconds per task over ``n`` tasks and the flush of their spans."""
    start = time.process_time()
    for i in range(n):
        task(genai, i)
    if telemetry.tracer_provider is not None:
        telemetry.tracer_provider.force_flush()
    return (time.process_time() - start) / n


def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:

        def settings(name: str) -> ShoalSettings:
            return ShoalSettings(
                data_dir=Path(tmp) / name,
                otel_sdk_disabled=False,
                otel_endpoint=None,
                otel_traces_endpoint=None,
                otel_metrics_endpoint=None,
            )

        with (
            setup_telemetry(settings("on"), "shoal-bench", install_global=False) as on_tel,
            sdk_histograms(settings("sdk")) as sdk_tel,
        ):
            telemetries = {
                "off": Telemetry.disabled("shoal-bench"),
                "spans only": spans_only(),
                "on": on_tel,
                "SDK histograms": sdk_tel,
            }
            modes = {name: (GenAI(t), t) for name, t in telemetries.items()}
            for genai, telemetry in modes.values():  # warm-up
                one_round(genai, telemetry, min(n, 500))
            cpu: dict[str, list[float]] = {name: [] for name in modes}
            for _ in range(rounds):
                for name, (genai, telemetry) in modes.items():
                    cpu[name].append(one_round(genai, telemetry, n))
    best = {name: min(v) * 1e6 for name, v in cpu.items()}
    median = {name: statistics.median(v) * 1e6 for name, v in cpu.items()}
    print(f"{n} step tasks a round (3 spans each), {rounds} rounds; CPU µs per task")
    print(f"{'mode':16} {'min':>8} {'median':>8} {'over off':>9} {'over spans only':>16}")
    for name in modes:
        print(
            f"{name:16} {best[name]:8.1f} {median[name]:8.1f} {best[name] - best['off']:9.1f} "
            f"{best[name] - best['spans only']:16.1f}"
        )
    print("'over spans only' is what each mode adds beyond the SDK's floor (min over rounds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per mode")
    args = parser.parse_args()
    main(args.tasks, args.rounds)
