"""Parameters and answers of the named queries: pydantic models, JSON on the wire.

Money is :class:`~decimal.Decimal` end to end; on the wire a plain decimal string.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer

__all__ = [
    "COST_DIMENSIONS",
    "SESSION_DIMENSIONS",
    "UNIT_DIMENSIONS",
    "CacheAnswer",
    "CacheRow",
    "CostAnswer",
    "CostParams",
    "CostRow",
    "FailedSpendAnswer",
    "FailedSpendRow",
    "InterventionAnswer",
    "InterventionRow",
    "LedgerAnswer",
    "LedgerParams",
    "LedgerRow",
    "Money",
    "OutcomeRow",
    "OutcomesAnswer",
    "OutcomesParams",
    "RetriesAnswer",
    "RetriesRow",
    "SessionRow",
    "SessionsAnswer",
    "SessionsParams",
    "SuccessCostAnswer",
    "SuccessCostRow",
    "TimeRange",
    "WorkflowRow",
    "WorkflowsAnswer",
    "WorkflowsParams",
]

SessionDimension = Literal[
    "team",
    "repo",
    "workflow",
    "task_class",
    "prompt_template",
    "prompt_version",
    "capability",
    "agent_version",
    "tool_set",
]
SESSION_DIMENSIONS: tuple[str, ...] = SessionDimension.__args__  # type: ignore[attr-defined]
"""Dimensions that belong to a call's session (``attributed_sessions``), not the call."""
CallDimension = Literal["fleet", "agent", "model", "principal", "goal", "outcome", "provider"]
Dimension = Literal[CallDimension, SessionDimension]
COST_DIMENSIONS: tuple[str, ...] = (
    *CallDimension.__args__,  # type: ignore[attr-defined]
    *SESSION_DIMENSIONS,
)

Money = Annotated[
    Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json")
]
"""USD as an exact decimal; on the wire a plain decimal string (``"0.0000000000"``, never
``"0E-10"``)."""


class _Model(BaseModel):
    """Frozen, and strict about unknown fields (a typo in a parameter is an error)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# -- parameters --------------------------------------------------------------------------------


class TimeRange(_Model):
    """``since <= time < until``; either end open when ``None``."""

    since: AwareDatetime | None = None
    until: AwareDatetime | None = None

    def where(self, column: str) -> tuple[str, list[Any]]:
        """A SQL condition on ``column`` and its parameters (``TRUE`` when unbounded)."""
        parts, params = ["TRUE"], []
        if self.since is not None:
            parts.append(f"{column} >= ?")
            params.append(self.since)
        if self.until is not None:
            parts.append(f"{column} < ?")
            params.append(self.until)
        return " AND ".join(parts), params


class CostParams(TimeRange):
    """Cost grouped by one or more dimensions (``by=["agent", "model"]``)."""

    by: list[Dimension] = Field(default=["model"], min_length=1)
    limit: int = Field(default=100, ge=1, le=10_000)
    """Rows returned, most expensive first (totals always cover every group)."""


UnitDimension = Literal[
    "team", "repo", "workflow", "task_class", "prompt_template", "prompt_version"
]
UNIT_DIMENSIONS: tuple[str, ...] = UnitDimension.__args__  # type: ignore[attr-defined]
"""The labels of an outcome unit (a goal's, or a bare session's)."""


class OutcomesParams(TimeRange):
    """Outcome units per fleet and effective outcome, and per label when ``by`` names any."""

    by: list[UnitDimension] = Field(default_factory=list)


class LedgerParams(TimeRange):
    """Tool-call ledger filters (``None`` matches everything)."""

    tool: str | None = None
    agent: str | None = None
    decision: Literal["allow", "deny", "needs_approval"] | None = None
    sensitivity: Literal["public", "internal", "confidential", "secret"] | None = None
    iid: str | None = None
    limit: int = Field(default=100, ge=1, le=10_000)


class SessionsParams(_Model):
    """Sessions in a state: ``active`` (not ended), ``stuck`` (active and silent longer than
    ``stuck_after_s``, or flagged by the core), ``looping`` (flagged by the core)."""

    state: Literal["active", "stuck", "looping"] = "active"
    now: AwareDatetime | None = None
    stuck_after_s: float = Field(default=300.0, gt=0)
    limit: int = Field(default=100, ge=1, le=10_000)


class WorkflowsParams(TimeRange):
    """Top workflows ordered by spend or by successful outcomes."""

    order: Literal["spend", "successes"] = "spend"
    limit: int = Field(default=10, ge=1, le=1000)


# -- answers -----------------------------------------------------------------------------------


class CostRow(_Model):
    key: list[str | None]
    calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: Money
    reported_cost_usd: Money


class CostAnswer(_Model):
    by: list[str]
    rows: list[CostRow]
    groups: int
    """Groups in all (``rows`` holds the first ``limit`` of them)."""
    calls: int
    total_usd: Money


class SuccessCostRow(_Model):
    fleet: str | None
    units: int
    successes: int
    failures: int
    abandoned: int
    pending: int
    spend_usd: Money
    success_spend_usd: Money
    cost_per_success_usd: Money | None
    """All spend of the fleet's units divided by its successes (failures included)."""


class SuccessCostAnswer(_Model):
    rows: list[SuccessCostRow]
    total: SuccessCostRow


class FailedSpendRow(_Model):
    fleet: str | None
    failed_sessions: int
    killed_sessions: int
    spend_usd: Money


class FailedSpendAnswer(_Model):
    rows: list[FailedSpendRow]
    total_usd: Money


class RetriesRow(_Model):
    fleet: str | None
    capability: str | None
    sessions: int
    retries: int
    successes: int
    retries_per_success: Money | None


class RetriesAnswer(_Model):
    rows: list[RetriesRow]


class LedgerRow(_Model):
    seq: int
    ts: datetime
    iid: str
    gid: str | None
    fleet: str | None
    agent: str | None
    instance: str | None
    principal: str | None
    tool: str
    version: str | None
    arguments: str | None
    sensitivity: str | None
    result_class: str
    latency_ms: float | None
    decision: str
    rule: str | None
    error: str | None


class LedgerAnswer(_Model):
    rows: list[LedgerRow]


class SessionRow(_Model):
    iid: str
    gid: str | None
    fleet: str | None
    agent: str | None
    capability: str | None
    status: str
    opened_at: datetime
    last_event_at: datetime
    model_calls: int
    tool_calls: int
    cost_usd: Money
    stuck: bool
    looping: bool


class SessionsAnswer(_Model):
    state: str
    rows: list[SessionRow]


class WorkflowRow(_Model):
    fleet: str | None
    capability: str
    sessions: int
    successes: int
    failures: int
    spend_usd: Money
    cost_per_success_usd: Money | None


class WorkflowsAnswer(_Model):
    order: str
    rows: list[WorkflowRow]


class InterventionRow(_Model):
    fleet: str | None
    sessions: int
    sessions_needing_approval: int
    approvals_requested: int
    rate: Money
    """Sessions that needed a human's approval / sessions."""
    granted: int = 0
    denied: int = 0
    expired: int = 0
    """Approvals nobody decided before their timeout."""
    approval_rate: Money | None = None
    """Granted / decided (granted, denied or expired); ``None`` when none was decided."""
    median_wait_s: float | None = None
    """Median time from request to decision, over decided approvals."""


class InterventionAnswer(_Model):
    rows: list[InterventionRow]
    total: InterventionRow


class OutcomeRow(_Model):
    fleet: str | None
    outcome: str
    units: int
    spend_usd: Money
    key: list[str | None] = Field(default_factory=list)
    """The unit's labels named by ``by``, in that order (none without ``by``)."""


class OutcomesAnswer(_Model):
    rows: list[OutcomeRow]


class CacheRow(_Model):
    """The gateway's response cache for one fleet (``fleet`` None: every fleet)."""

    fleet: str | None
    calls: int
    hits: int
    hit_rate: Decimal | None
    saved_usd: Money


class CacheAnswer(_Model):
    rows: list[CacheRow]
    total: CacheRow
