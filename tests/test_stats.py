"""The cohort comparison arithmetic: exact z, refusals for tiny samples."""

from __future__ import annotations

import math

import pytest

from shoal.stats import bootstrap_ratio, two_proportion


def test_a_clear_drop_in_success_rate_is_a_significant_regression() -> None:
    t = two_proportion(90, 100, 60, 100)
    pooled = 150 / 200
    se = math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert t.z == pytest.approx((0.6 - 0.9) / se)
    assert t.p_value is not None and t.p_value < 1e-5
    assert t.significant and t.regressed
    assert (t.rate_a, t.rate_b) == (0.9, 0.6)


def test_two_samples_are_never_called_significant() -> None:
    t = two_proportion(2, 2, 0, 2)
    assert t.z is None and t.p_value is None
    assert not t.significant and not t.regressed
    assert "too few samples (n=2 and n=2; need 10 each)" == t.reason


def test_an_improvement_is_significant_but_not_a_regression() -> None:
    t = two_proportion(50, 100, 80, 100)
    assert t.significant and not t.regressed


def test_a_small_difference_is_not_significant() -> None:
    t = two_proportion(45, 100, 40, 100)
    assert t.p_value is not None and t.p_value > 0.05
    assert not t.regressed


def test_bootstrap_cost_per_success_interval_excludes_zero_for_a_doubling() -> None:
    a = [(1.0, 1.0)] * 40
    b = [(2.0, 1.0)] * 40
    iv = bootstrap_ratio(a, b)
    assert iv.estimate == pytest.approx(1.0)
    assert iv.significant
    assert bootstrap_ratio(a[:3], b[:3]).significant is False
