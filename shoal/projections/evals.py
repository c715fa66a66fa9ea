"""Evaluations over outcomes: how well each task class, model, version or prompt does.

The unit is the **task session** (a session with a capability: the work one agent instance
of one release did), with its effective outcome (``attributed_sessions``). :func:`evals`
groups them; :func:`cohort_outcomes` sums one cohort (what a canary or the core's
regression check needs); :func:`compare_cohorts` sets two cohorts side by side with
:mod:`shoal.stats`: the two-proportion test on success rate (every decided session) and a
bootstrap interval on cost per success. A regression is flagged only when significant.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from shoal.projections.answers import TimeRange
from shoal.projections.eval_answers import (
    Cohort,
    CohortOutcomes,
    CompareAnswer,
    CompareParams,
    CostTest,
    EvalRow,
    EvalsAnswer,
    EvalsParams,
    RateTest,
)
from shoal.projections.money import MONEY_QUANTUM
from shoal.stats import bootstrap_ratio, two_proportion

if TYPE_CHECKING:
    from shoal.projections.recorder import DuckDBDatastore

__all__ = ["cohort_outcomes", "compare_cohorts", "evals"]

_ZERO = Decimal(0)
_DECIDED = "effective_outcome IN ('success', 'failure', 'abandoned')"
_TASKS = "capability IS NOT NULL"

# One group's figures, over the rows of ``attributed_sessions`` it covers.
_FIGURES = f"""
    count(*) AS sessions,
    count(*) FILTER ({_DECIDED}) AS decided,
    count(*) FILTER (effective_outcome = 'success') AS successes,
    count(*) FILTER (effective_outcome IN ('failure', 'abandoned')) AS failures,
    COALESCE(sum(cost_usd), 0) AS spend_usd,
    COALESCE(sum(greatest(attempts - 1, 0)), 0) AS retries,
    count(*) FILTER (approvals_requested > 0 OR asks > 0) AS interventions
"""
_LATENCY = """
    quantile_cont(epoch(ended_at) - epoch(started_at), [0.5, 0.95])
        FILTER (ended_at IS NOT NULL AND started_at IS NOT NULL) AS latency
"""


def _ratio(numerator: Decimal | int, denominator: int) -> Decimal | None:
    if not denominator:
        return None
    return (Decimal(numerator) / denominator).quantize(MONEY_QUANTUM)


def _figures(r: dict[str, Any]) -> dict[str, Any]:
    """The :class:`Figures` fields of one row of :data:`_FIGURES`."""
    return {
        "sessions": r["sessions"],
        "decided": r["decided"],
        "successes": r["successes"],
        "failures": r["failures"],
        "pending": r["sessions"] - r["decided"],
        "success_rate": _ratio(r["successes"], r["decided"]),
        "spend_usd": r["spend_usd"],
        "cost_per_success_usd": _ratio(r["spend_usd"], r["successes"]),
        "retries": int(r["retries"]),
        "interventions": r["interventions"],
    }


def _eval_row(key: list[Any], r: dict[str, Any]) -> EvalRow:
    latency = r.get("latency") or [None, None]
    return EvalRow(
        **_figures(r),
        key=[None if k is None else str(k) for k in key],
        retries_per_success=_ratio(int(r["retries"]), r["successes"]),
        intervention_rate=_ratio(r["interventions"], r["sessions"]),
        latency_p50_s=None if latency[0] is None else float(latency[0]),
        latency_p95_s=None if latency[1] is None else float(latency[1]),
    )


def evals(ds: DuckDBDatastore, p: EvalsParams) -> EvalsAnswer:
    """Success rate, cost and retries per success, intervention rate and latency, grouped."""
    where, params = p.where("opened_at")
    keys = ", ".join(f"{d} AS k{i}" for i, d in enumerate(p.by))
    group = ", ".join(f"k{i}" for i in range(len(p.by)))
    source = f"FROM attributed_sessions WHERE {_TASKS} AND {where}"
    # Two plain scans: DuckDB runs GROUPING SETS by materialising the input (3x slower here).
    groups = ds.rows(
        f"SELECT {keys}, {_FIGURES}, {_LATENCY} {source} "
        f"GROUP BY {group} ORDER BY sessions DESC, {group}",
        params,
    )
    [total] = ds.rows(f"SELECT {_FIGURES}, {_LATENCY} {source}", params)
    return EvalsAnswer(
        by=list(p.by),
        rows=[_eval_row([r[f"k{i}"] for i in range(len(p.by))], r) for r in groups[: p.limit]],
        groups=len(groups),
        total=_eval_row([], total),
    )


def _cohort_where(cohort: Cohort, window: TimeRange) -> tuple[str, list[Any]]:
    where, params = window.where("opened_at")
    for column, value in cohort.model_dump().items():
        if value is not None:
            where += f" AND {column} = ?"
            params.append(value)
    return f"{_TASKS} AND {where}", params


def cohort_outcomes(
    ds: DuckDBDatastore, cohort: Cohort, window: TimeRange | None = None
) -> CohortOutcomes:
    """One cohort's task sessions opened in ``window``: decided, successes, spend, ratios."""
    where, params = _cohort_where(cohort, window or TimeRange())
    [r] = ds.rows(f"SELECT {_FIGURES} FROM attributed_sessions WHERE {where}", params)
    return CohortOutcomes(cohort=cohort, **_figures(r))


def _cost_units(
    ds: DuckDBDatastore, cohort: Cohort, window: TimeRange, limit: int
) -> list[tuple[float, float]]:
    """``(cost, 1 if success else 0)`` per decided session, at most ``limit`` of them: a
    fixed pseudo-random choice (by hash of the IID), so the same data gives the same rows."""
    where, params = _cohort_where(cohort, window)
    rows = ds.rows(
        f"""
        SELECT cost_usd::DOUBLE AS cost, (effective_outcome = 'success')::INTEGER AS success
        FROM attributed_sessions WHERE {where} AND {_DECIDED}
        ORDER BY hash(iid), iid LIMIT {limit}
        """,
        params,
    )
    return [(r["cost"] or 0.0, float(r["success"])) for r in rows]


def compare_cohorts(ds: DuckDBDatastore, p: CompareParams) -> CompareAnswer:
    """Baseline against candidate: sample sizes, rates, the tests, and whether B regressed."""
    a, b = cohort_outcomes(ds, p.baseline, p), cohort_outcomes(ds, p.candidate, p)
    rate = two_proportion(
        a.successes, a.decided, b.successes, b.decided, alpha=p.alpha, min_samples=p.min_samples
    )
    units_a = _cost_units(ds, p.baseline, p, p.bootstrap_units)
    units_b = _cost_units(ds, p.candidate, p, p.bootstrap_units)
    interval = bootstrap_ratio(
        units_a,
        units_b,
        confidence=1 - p.alpha,
        resamples=p.resamples,
        min_samples=p.min_samples,
    )
    cost_worse = interval.significant and (interval.estimate or 0) > 0
    rate_test = RateTest(
        n_a=rate.n_a,
        n_b=rate.n_b,
        successes_a=rate.successes_a,
        successes_b=rate.successes_b,
        z=rate.z,
        p_value=rate.p_value,
        alpha=rate.alpha,
        significant=rate.significant,
        regressed=rate.regressed,
        reason=rate.reason,
    )
    cost_test = CostTest(
        units_a=len(units_a),
        units_b=len(units_b),
        estimate=interval.estimate,
        low=interval.low,
        high=interval.high,
        confidence=interval.confidence,
        resamples=interval.resamples,
        significant=interval.significant,
        regressed=cost_worse,
        reason=interval.reason,
    )
    return CompareAnswer(
        baseline=a,
        candidate=b,
        success_rate=rate_test,
        cost_per_success=cost_test,
        regressed=rate.regressed or cost_worse,
        verdict=_verdict(rate_test, cost_test),
    )


def _verdict(rate: RateTest, cost: CostTest) -> str:
    worse = []
    if rate.regressed:
        worse.append(f"success rate fell (p={rate.p_value:.3g}, n={rate.n_a} vs {rate.n_b})")
    if cost.regressed:
        worse.append(f"cost per success rose (interval {cost.low:.6f}..{cost.high:.6f} USD)")
    if worse:
        return "regressed: " + "; ".join(worse)
    if rate.p_value is None:
        return f"not judged: {rate.reason}"
    if rate.significant:
        return f"improved: success rate rose (p={rate.p_value:.3g})"
    return f"no significant difference (p={rate.p_value:.3g}, n={rate.n_a} vs {rate.n_b})"
