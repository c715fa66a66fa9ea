"""Governance events: policy decisions and applications, approvals, and the core's verdicts
on a version (``evaluation.regressed|passed``). Re-exported by :mod:`shoal.schemas.events`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from shoal.schemas.eventdata import Decision, EventData, RiskTier

__all__ = [
    "ApprovalDenied",
    "ApprovalGranted",
    "ApprovalRequested",
    "CohortComparison",
    "EvaluationPassed",
    "EvaluationRegressed",
    "PolicyApplied",
    "PolicyDecided",
]


class PolicyDecided(EventData):
    """A gateway (or the core) decided whether an action may run, and by which rule."""

    type: ClassVar[str] = "shoal.policy.decided"
    action: Literal["model.call", "tool.call", "task.run", "delegate", "mcp_server.call"]
    target: str
    decision: Decision
    rule: str
    reason: str = ""
    tier: RiskTier | None = None
    """The risk tier of the rule that decided (``None``: a plain allow/deny or no policy)."""
    policy_version: str | None = None
    """Which applied policy decided (``<scope>@<revision>:<digest>``), ``None``: the manifest."""


class PolicyApplied(EventData):
    """An operator applied a policy file (global or for one fleet)."""

    type: ClassVar[str] = "shoal.policy.applied"
    scope: str
    version: str
    digest: str
    rules: list[str] = Field(default_factory=list)
    by: str
    reason: str = ""


class ApprovalRequested(EventData):
    """An action needs a human's approval before it runs."""

    type: ClassVar[str] = "shoal.approval.requested"
    request_id: str
    action: str
    target: str
    reason: str = ""
    tier: RiskTier | None = None
    rule: str = ""
    policy_version: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    """The arguments as an approver may see them (redacted by the tool's sensitivity)."""
    request_hash: str = ""
    """sha256 of the exact request (action, target, arguments): a grant covers only it."""
    timeout_s: float | None = None


class ApprovalGranted(EventData):
    """A human approved a pending action."""

    type: ClassVar[str] = "shoal.approval.granted"
    request_id: str
    by: str
    reason: str = ""


class ApprovalDenied(EventData):
    """A human refused a pending action."""

    type: ClassVar[str] = "shoal.approval.denied"
    request_id: str
    by: str
    reason: str = ""
    expired: bool = False
    """True when nobody decided before the request's timeout."""


class CohortComparison(EventData):
    """The core's two-proportion test of a version's success rate against the one before it.

    Cohort A is ``from_version`` (the baseline), B is ``to_version`` (the candidate); a
    session counts for the version of the instance that ended it (``task.completed`` is a
    success, a final ``task.failed`` a failure). ``canary`` is true when B ran as the canary
    of ``fleet upgrade --canary`` (docs/canary.md).
    """

    fleet: str
    agent: str
    from_version: str
    to_version: str
    successes_a: int
    n_a: int
    successes_b: int
    n_b: int
    rate_a: float | None = None
    rate_b: float | None = None
    z: float | None = None  # None: the test does not apply (no variance, too few expected)
    p_value: float | None = None
    alpha: float
    min_samples: int
    canary: bool = False
    seq: int = Field(description="Event-log sequence of the outcome that decided it.")


class EvaluationRegressed(CohortComparison):
    """B's success rate is significantly lower than A's: recorded once per fleet, agent,
    from and to version, by the core only."""

    type: ClassVar[str] = "shoal.evaluation.regressed"


class EvaluationPassed(CohortComparison):
    """A canary cohort with enough samples is not significantly worse: it may be promoted."""

    type: ClassVar[str] = "shoal.evaluation.passed"
