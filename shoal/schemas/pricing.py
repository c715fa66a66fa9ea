"""The one price table: what a model call costs, whatever the agent claims.

Prices are USD per million tokens, per model, as :class:`~decimal.Decimal` (no float
rounding: a call of 1 token costs exactly ``price / 1e6``). The table is a YAML file: the one
shipped in the package (``prices.yaml``) unless ``SHOAL_PRICE_TABLE`` names another.

The core owns it: every recorded cost is the core's figure from this table. It lives with
the schemas (a document, like a fleet spec) so that every part that needs a price reads the
same table — the offline model client's reported estimate, the gateways — and no second
table can drift from the core's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from shoal.errors import ShoalError

__all__ = ["DEFAULT_MODEL", "ModelPrice", "PriceTable", "PriceTableInvalid", "builtin_prices"]

DEFAULT_MODEL = "*"
"""The table entry that prices a model the table does not name."""

_MILLION = Decimal(1_000_000)


class PriceTableInvalid(ShoalError):
    """The price table file cannot be read or has a malformed entry."""


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens for one model."""

    input: Decimal
    output: Decimal
    cached_input: Decimal

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Decimal:
        """Exact cost of one call; ``input_tokens`` include the ``cached_tokens``."""
        cached = min(cached_tokens, input_tokens)
        return (
            Decimal(input_tokens - cached) * self.input
            + Decimal(cached) * self.cached_input
            + Decimal(output_tokens) * self.output
        ) / _MILLION


@dataclass(frozen=True)
class PriceTable:
    """Prices per model plus per-fleet spend caps, as loaded from one file."""

    models: dict[str, ModelPrice]
    fleet_budgets: dict[str, Decimal] = field(default_factory=dict)
    source: str = "builtin"

    def price(self, model: str) -> ModelPrice:
        """The model's price, or the ``"*"`` entry's for a model the table does not name."""
        found = self.models.get(model) or self.models.get(DEFAULT_MODEL)
        if found is None:
            raise PriceTableInvalid(f"price table {self.source} has no {model!r} and no '*' entry")
        return found

    def cost(
        self, model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0
    ) -> Decimal:
        """Server-side cost of one model call in USD."""
        return self.price(model).cost(input_tokens, output_tokens, cached_tokens)

    def is_listed(self, model: str) -> bool:
        """True when the model has its own entry (not priced by ``"*"``)."""
        return model in self.models

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """Read a table file; ``None`` reads the default table shipped with shoal."""
        if path is None:
            text = resources.files("shoal.schemas").joinpath("prices.yaml").read_text()
            source = "builtin"
        else:
            try:
                text = Path(path).read_text()
            except OSError as e:
                raise PriceTableInvalid(f"cannot read price table {path}: {e}") from e
            source = str(path)
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise PriceTableInvalid(f"price table {source} is not valid YAML: {e}") from e
        return cls.from_dict(doc, source=source)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, source: str = "dict") -> PriceTable:
        """Build a table from ``{"models": {name: {input, output, cached_input}}, ...}``."""
        if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
            raise PriceTableInvalid(f"price table {source} needs a 'models' mapping")
        models = {
            str(name): ModelPrice(
                input=_usd(entry, "input", source, name),
                output=_usd(entry, "output", source, name),
                cached_input=_usd(entry, "cached_input", source, name, default="input"),
            )
            for name, entry in doc["models"].items()
        }
        budgets = {
            str(fleet): _decimal(value, f"{source}: fleet_budgets.{fleet}")
            for fleet, value in (doc.get("fleet_budgets") or {}).items()
        }
        return cls(models=models, fleet_budgets=budgets, source=source)


@functools.cache
def builtin_prices() -> PriceTable:
    """The table shipped with shoal, read once per process (it is package data)."""
    return PriceTable.load()


def _usd(entry: Any, key: str, source: str, name: str, default: str | None = None) -> Decimal:
    if not isinstance(entry, dict):
        raise PriceTableInvalid(f"price table {source}: {name!r} must be a mapping")
    value = entry.get(key, entry.get(default) if default else None)
    if value is None:
        raise PriceTableInvalid(f"price table {source}: {name!r} has no {key!r} price")
    return _decimal(value, f"{source}: {name}.{key}")


def _decimal(value: Any, where: str) -> Decimal:
    try:
        # str() first: a YAML float 0.1 must become Decimal("0.1"), not 0.1000000000000000055…
        result = Decimal(str(value))
    except InvalidOperation as e:
        raise PriceTableInvalid(f"price table {where}: {value!r} is not a number") from e
    if result < 0 or not result.is_finite():
        raise PriceTableInvalid(f"price table {where}: {value!r} must be a finite amount >= 0")
    return result
