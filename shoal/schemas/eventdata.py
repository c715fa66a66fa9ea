"""The base of every event payload, and the value types payloads share."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["Decision", "EventData", "Money", "Outcome", "RiskTier", "Sensitivity"]

Money = Decimal
Decision = Literal["allow", "deny", "needs_approval"]
RiskTier = Literal["low", "medium", "high"]
Sensitivity = Literal["public", "internal", "confidential", "secret"]
Outcome = Literal["success", "failure", "abandoned"]


class EventData(BaseModel):
    """Base of every payload; ``type`` is the full CloudEvents type it travels as."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    type: ClassVar[str]

    @classmethod
    def short_type(cls) -> str:
        """The type without its ``shoal.`` prefix, as it appears in event subjects."""
        return cls.type.removeprefix("shoal.")
