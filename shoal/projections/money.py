"""Money in the projection: exact decimals at a fixed scale.

Prices are USD per million tokens, so one token of a model priced ``0.075`` costs
``0.000000075``: ten decimal places keep every server-side cost exact. Stored as
``DECIMAL(18,10)``; sums are exact ``DECIMAL(38,10)``.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = ["MONEY_QUANTUM", "MONEY_SCALE", "money"]

MONEY_SCALE = 10
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)


def money(value: Decimal | None) -> Decimal | None:
    """A cost at the stored scale (``None`` stays ``None``)."""
    return None if value is None else value.quantize(MONEY_QUANTUM)
