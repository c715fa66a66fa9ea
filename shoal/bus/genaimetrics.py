"""The metrics shoal records: the GenAI client histograms and shoal's own counters.

The two GenAI histograms (``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``)
are aggregated in Python and merged into the SDK's collections (:mod:`shoal.bus.histograms`);
task, instance and cost counts are :class:`Tally` values read by observable instruments.
"""

from __future__ import annotations

from opentelemetry.metrics import CallbackOptions, Observation

from shoal.bus.telemetry import Telemetry

__all__ = ["DURATION_BUCKETS", "TOKEN_BUCKETS", "AttrKey", "ShoalMetrics", "Tally"]

# Bucket boundaries the GenAI metric conventions prescribe for these two histograms.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip

AttrKey = tuple[tuple[str, str | int | float | bool], ...]


class Tally:
    """A count kept in Python and reported by an observable instrument when collected.

    An add is a dict update (~0.2 µs) where a synchronous SDK counter costs ~5 µs: task
    counters and cost move on every task. Reported cumulatively, as observable counters are.
    """

    def __init__(self) -> None:
        self.values: dict[AttrKey, float] = {}

    def add(self, amount: float, attrs: AttrKey) -> None:
        self.values[attrs] = self.values.get(attrs, 0) + amount

    def observe(self, options: CallbackOptions) -> list[Observation]:
        # dict() copies under the GIL: the collecting thread never sees a dict mid-update.
        return [Observation(value, dict(key)) for key, value in dict(self.values).items()]


class ShoalMetrics:
    """The instruments: GenAI client histograms and shoal's counters."""

    def __init__(self, telemetry: Telemetry) -> None:
        meter, histograms = telemetry.meter, telemetry.histograms
        self.token_usage = histograms.histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            boundaries=TOKEN_BUCKETS,
        )
        self.operation_duration = histograms.histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            boundaries=DURATION_BUCKETS,
        )
        self.tasks_started, self.tasks_completed, self.tasks_failed = Tally(), Tally(), Tally()
        self.active_instances, self.cost = Tally(), Tally()
        for name, tally, unit, description in (
            ("shoal.tasks.started", self.tasks_started, "{task}", "Task attempts started."),
            ("shoal.tasks.completed", self.tasks_completed, "{task}", "Tasks that completed."),
            ("shoal.tasks.failed", self.tasks_failed, "{task}", "Task attempts that failed."),
            ("shoal.cost", self.cost, "USD", "Model spend reported by agents, in USD."),
        ):
            meter.create_observable_counter(
                name, callbacks=[tally.observe], unit=unit, description=description
            )
        meter.create_observable_up_down_counter(
            "shoal.instances.active",
            callbacks=[self.active_instances.observe],
            unit="{instance}",
            description="Agent instances running.",
        )
        self.policy_denials = meter.create_counter(
            "shoal.policy.denials", unit="{decision}", description="Calls a gateway refused."
        )
        self.deadlettered = meter.create_counter(
            "shoal.messages.deadlettered", unit="{message}", description="Messages dead-lettered."
        )
