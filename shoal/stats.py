"""Honest comparisons of two cohorts: a two-proportion test and a bootstrap interval.

A leaf module (it imports nothing from shoal), so the core, the projections and the CLI can
all use the same arithmetic. Used to compare success rates (``shoal evals compare``), to flag
``evaluation.regressed`` after an upgrade, and to decide a canary rollout.

- :func:`two_proportion` is the pooled two-proportion z-test. It refuses to call anything
  significant when either cohort is below ``min_samples`` (default 10) or when the normal
  approximation does not hold (fewer than 5 expected successes or failures in a cohort): a
  difference between two samples is noise, not a regression.
- :func:`bootstrap_ratio` gives a percentile bootstrap confidence interval on the
  difference of a ratio (for example cost per success: total cost over successes) between two
  cohorts, with a fixed seed so that the same data gives the same answer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BootstrapInterval", "TwoProportion", "bootstrap_ratio", "two_proportion"]

MIN_SAMPLES = 10
"""Below this many samples in either cohort no difference is called significant."""


@dataclass(frozen=True, slots=True)
class TwoProportion:
    """Cohort A (before, baseline) against cohort B (after, candidate)."""

    successes_a: int
    n_a: int
    successes_b: int
    n_b: int
    z: float | None  # None when the test does not apply (too few samples, or no variance)
    p_value: float | None  # two-sided
    alpha: float
    reason: str  # why the test does or does not apply, one line

    @property
    def rate_a(self) -> float | None:
        return self.successes_a / self.n_a if self.n_a else None

    @property
    def rate_b(self) -> float | None:
        return self.successes_b / self.n_b if self.n_b else None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < self.alpha

    @property
    def regressed(self) -> bool:
        """B's success rate is significantly lower than A's."""
        return self.significant and self.z is not None and self.z < 0


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_proportion(
    successes_a: int,
    n_a: int,
    successes_b: int,
    n_b: int,
    *,
    alpha: float = 0.05,
    min_samples: int = MIN_SAMPLES,
) -> TwoProportion:
    """The pooled two-proportion z-test of B's success rate against A's (z < 0: B is worse)."""
    for name, value in (("successes_a", successes_a), ("successes_b", successes_b)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if successes_a > n_a or successes_b > n_b:
        raise ValueError("successes cannot exceed the sample size")

    def result(z: float | None, p: float | None, reason: str) -> TwoProportion:
        return TwoProportion(successes_a, n_a, successes_b, n_b, z, p, alpha, reason)

    if min(n_a, n_b) < min_samples:
        return result(None, None, f"too few samples (n={n_a} and n={n_b}; need {min_samples} each)")
    pooled = (successes_a + successes_b) / (n_a + n_b)
    expected = [n * pooled for n in (n_a, n_b)] + [n * (1 - pooled) for n in (n_a, n_b)]
    if min(expected) < 5:
        return result(None, None, "too few expected successes or failures for the normal test")
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = (successes_b / n_b - successes_a / n_a) / se
    p = min(1.0, 2 * _normal_sf(abs(z)))
    return result(z, p, "two-proportion z-test")


@dataclass(frozen=True, slots=True)
class BootstrapInterval:
    """A percentile interval on ``ratio(B) - ratio(A)``; None bounds when it does not apply."""

    estimate: float | None
    low: float | None
    high: float | None
    confidence: float
    resamples: int
    reason: str

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def _ratio(rows: Sequence[tuple[float, float]]) -> float | None:
    num = sum(r[0] for r in rows)
    den = sum(r[1] for r in rows)
    return num / den if den else None


def bootstrap_ratio(
    a: Sequence[tuple[float, float]],
    b: Sequence[tuple[float, float]],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    min_samples: int = MIN_SAMPLES,
) -> BootstrapInterval:
    """Bootstrap ``sum(num)/sum(den)`` of B minus A; rows are ``(numerator, denominator)``.

    For cost per success a row is one session: ``(cost, 1 if it succeeded else 0)``.
    """
    ra, rb = _ratio(a), _ratio(b)
    estimate = rb - ra if ra is not None and rb is not None else None
    if min(len(a), len(b)) < min_samples or estimate is None:
        return BootstrapInterval(
            estimate, None, None, confidence, 0, f"too few samples (n={len(a)} and n={len(b)})"
        )
    rng = random.Random(seed)
    diffs: list[float] = []
    for _ in range(resamples):
        sa = _ratio(rng.choices(a, k=len(a)))
        sb = _ratio(rng.choices(b, k=len(b)))
        if sa is not None and sb is not None:
            diffs.append(sb - sa)
    if len(diffs) < resamples // 2:
        return BootstrapInterval(estimate, None, None, confidence, len(diffs), "ratio undefined")
    diffs.sort()
    tail = (1 - confidence) / 2
    low = diffs[int(tail * (len(diffs) - 1))]
    high = diffs[int((1 - tail) * (len(diffs) - 1))]
    return BootstrapInterval(estimate, low, high, confidence, len(diffs), "percentile bootstrap")
