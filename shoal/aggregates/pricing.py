"""The core's price table (defined with the schemas, so agents and gateways share it)."""

from shoal.schemas.pricing import DEFAULT_MODEL, ModelPrice, PriceTable, PriceTableInvalid

__all__ = ["DEFAULT_MODEL", "ModelPrice", "PriceTable", "PriceTableInvalid"]
