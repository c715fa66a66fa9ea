"""Ratios and zero shared by the named queries: money-quantized, ``None`` over nothing."""

from __future__ import annotations

from decimal import Decimal

from shoal.projections.money import MONEY_QUANTUM

__all__ = ["ZERO", "ratio"]

ZERO = Decimal(0)


def ratio(numerator: Decimal | int, denominator: int) -> Decimal | None:
    """``numerator / denominator`` to the money quantum; ``None`` when the denominator is 0."""
    if not denominator:
        return None
    return (Decimal(numerator) / denominator).quantize(MONEY_QUANTUM)
