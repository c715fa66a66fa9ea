"""Parameters and answers of ``evals``, ``evals-compare`` and ``report`` (JSON on the wire).

Rates and ratios are exact decimals (ten places, like money); ``None`` where the
denominator is zero. Money is USD as :class:`~decimal.Decimal`, a decimal string on the wire.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, model_validator

from shoal.projections.answers import Money, TimeRange, _Model

__all__ = [
    "EVAL_DIMENSIONS",
    "Cohort",
    "CohortOutcomes",
    "CompareAnswer",
    "CompareParams",
    "CostTest",
    "EvalRow",
    "EvalsAnswer",
    "EvalsParams",
    "Figures",
    "RateTest",
    "ReportAnswer",
    "ReportRow",
]

EvalDimension = Literal[
    "task_class",
    "capability",
    "model",
    "agent",
    "agent_version",
    "prompt_template",
    "prompt_version",
    "tool_set",
    "team",
    "repo",
    "workflow",
    "fleet",
]
EVAL_DIMENSIONS: tuple[str, ...] = EvalDimension.__args__  # type: ignore[attr-defined]

Ratio = Decimal
"""An exact ratio, ten decimal places."""


# -- evals ------------------------------------------------------------------------------------


class EvalsParams(TimeRange):
    """Task sessions opened in the range, grouped by one or more dimensions."""

    by: list[EvalDimension] = Field(default=["capability"], min_length=1)
    limit: int = Field(default=100, ge=1, le=10_000)


class Figures(_Model):
    """What a set of task sessions did: counts, spend and the ratios over them.

    ``success_rate`` is successes over decided sessions (success, failure or abandoned;
    pending ones are not judged yet). Cost per success divides all the spend, failures
    included, by the successes. An intervention is a session that asked a person
    (``session.asked``) or needed an approval.
    """

    sessions: int
    decided: int
    successes: int
    failures: int
    pending: int
    success_rate: Ratio | None
    spend_usd: Money
    cost_per_success_usd: Money | None
    retries: int
    interventions: int


class EvalRow(Figures):
    """One group of task sessions (``key`` in the order of ``by``; the total has none)."""

    key: list[str | None]
    retries_per_success: Ratio | None
    intervention_rate: Ratio | None
    latency_p50_s: float | None
    latency_p95_s: float | None


class EvalsAnswer(_Model):
    by: list[str]
    rows: list[EvalRow]
    groups: int
    total: EvalRow


# -- compare ----------------------------------------------------------------------------------


class Cohort(_Model):
    """Task sessions matching every field that is set (``None`` matches anything)."""

    agent: str | None = None
    agent_version: str | None = None
    model: str | None = None
    prompt_template: str | None = None
    prompt_version: str | None = None
    capability: str | None = None
    task_class: str | None = None
    fleet: str | None = None
    team: str | None = None

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.model_dump().items() if v is not None]
        return " ".join(parts) or "all task sessions"


class CompareParams(TimeRange):
    """Baseline (A, before) against candidate (B, after)."""

    baseline: Cohort
    candidate: Cohort
    alpha: float = Field(default=0.05, gt=0, lt=1)
    min_samples: int = Field(default=10, ge=2, le=1_000_000)
    bootstrap_units: int = Field(default=300, ge=10, le=100_000)
    """At most this many decided sessions per cohort feed the bootstrap (a fixed pseudo-random
    choice by IID hash), which runs in Python (1000 resamples of 300 sessions: ~0.3 s); the
    interval is then wider than with every session (conservative). The success-rate test
    always uses every session."""
    resamples: int = Field(default=1000, ge=100, le=20_000)

    @model_validator(mode="after")
    def _different(self) -> CompareParams:
        if self.baseline == self.candidate:
            raise ValueError("baseline and candidate are the same cohort")
        return self


class CohortOutcomes(Figures):
    """A cohort's figures (what a canary or a regression check judges)."""

    cohort: Cohort


class RateTest(_Model):
    """The two-proportion z-test of B's success rate against A's (``z < 0``: B is worse)."""

    n_a: int
    n_b: int
    successes_a: int
    successes_b: int
    z: float | None
    p_value: float | None
    alpha: float
    significant: bool
    regressed: bool
    reason: str


class CostTest(_Model):
    """A percentile bootstrap interval on cost per success, B minus A (USD)."""

    units_a: int
    units_b: int
    estimate: float | None
    low: float | None
    high: float | None
    confidence: float
    resamples: int
    significant: bool
    regressed: bool  # B costs significantly more per success
    reason: str


class CompareAnswer(_Model):
    baseline: CohortOutcomes
    candidate: CohortOutcomes
    success_rate: RateTest
    cost_per_success: CostTest
    regressed: bool
    verdict: str


# -- report -----------------------------------------------------------------------------------


class ReportRow(_Model):
    """One fleet and team over the period (the total has ``None`` for both).

    Units are outcome units (goals, bare sessions) opened in the period; controls count the
    sessions opened in it: denials (policy refusals), approvals requested and granted, kills
    (sessions killed) and incidents (sessions flagged stuck or looping, over budget, or with
    events the core refused).
    """

    fleet: str | None
    team: str | None
    units: int
    successes: int
    failures: int
    spend_usd: Money
    cost_per_success_usd: Money | None
    sessions: int
    denials: int
    approvals_requested: int
    approvals_granted: int
    kills: int
    incidents: int


class ReportAnswer(_Model):
    since: str | None
    until: str | None
    rows: list[ReportRow]
    total: ReportRow
