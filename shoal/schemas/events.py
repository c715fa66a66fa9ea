"""One pydantic model per event type: the ``data`` of a shoal CloudEvent.

Every payload subclasses :class:`EventData` and names its CloudEvents ``type`` in a class
variable, so ``ModelCalled.type == "shoal.model.called"`` and the registry below maps a wire
type back to its model. Payloads ignore unknown fields, so an agent built against a newer
contract can add fields without being dead-lettered by an older core.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from shoal.schemas.eventdata import (
    EventData,
    Money,
    Outcome,
    RiskTier,
    Sensitivity,
)
from shoal.schemas.governance import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    CohortComparison,
    EvaluationPassed,
    EvaluationRegressed,
    PolicyApplied,
    PolicyDecided,
)
from shoal.schemas.labels import Labels

__all__ = [
    "EVENT_TYPES",
    "AgentCrashLooping",
    "AgentKilled",
    "AgentStarted",
    "AgentStopped",
    "ApprovalDenied",
    "ApprovalGranted",
    "ApprovalRequested",
    "BudgetExceeded",
    "CohortComparison",
    "ControlAccepted",
    "ControlRefused",
    "EvaluationPassed",
    "EvaluationRegressed",
    "EventData",
    "GoalCompleted",
    "GoalFailed",
    "GoalPlanned",
    "GoalSubmitted",
    "Labels",
    "ModelCalled",
    "OutcomeReported",
    "PlannedTask",
    "PolicyApplied",
    "PolicyDecided",
    "RiskTier",
    "SessionAsked",
    "SessionFlagged",
    "SessionKilled",
    "SessionMessage",
    "TaskAssigned",
    "TaskCompleted",
    "TaskFailed",
    "TaskStarted",
    "ToolCalled",
]

# -- goals --------------------------------------------------------------------------------


class GoalSubmitted(EventData):
    """Someone asked a fleet to achieve a goal."""

    type: ClassVar[str] = "shoal.goal.submitted"
    fleet: str
    text: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)
    budget_usd: Money | None = None
    labels: Labels | None = None  # attribution: team, repo, workflow, task class, prompt


class PlannedTask(BaseModel):
    """One task of a goal's plan, with the IID its session will have."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    iid: str
    capability: str
    input: dict[str, Any] = Field(default_factory=dict)


class GoalPlanned(EventData):
    """The orchestrator split a goal into tasks."""

    type: ClassVar[str] = "shoal.goal.planned"
    tasks: list[PlannedTask]


class GoalCompleted(EventData):
    """Every task of the goal finished and the orchestrator consolidated their results."""

    type: ClassVar[str] = "shoal.goal.completed"
    result: dict[str, Any] = Field(default_factory=dict)
    summary: str = ""


class GoalFailed(EventData):
    """The goal cannot be achieved; ``reason`` says why."""

    type: ClassVar[str] = "shoal.goal.failed"
    reason: str
    failed_iids: list[str] = Field(default_factory=list)


# -- tasks --------------------------------------------------------------------------------


class TaskAssigned(EventData):
    """A task was put on a capability's work queue (the same event is on the event log)."""

    type: ClassVar[str] = "shoal.task.assigned"
    capability: str
    input: dict[str, Any] = Field(default_factory=dict)
    budget_usd: Money | None = None
    goal_budget_usd: Money | None = None
    """The budget of the goal the task belongs to, carried down from ``goal.submitted`` so
    the gateway can reserve each call against it (it only tightens: see docs/gateways.md)."""
    labels: Labels | None = None  # the assigning session's, unless the assigner sets its own


class TaskStarted(EventData):
    """An instance began working on a task (``attempt`` counts from 1)."""

    type: ClassVar[str] = "shoal.task.started"
    capability: str
    attempt: int = Field(default=1, ge=1)


class TaskCompleted(EventData):
    """A task's handler returned; ``output`` is its result."""

    type: ClassVar[str] = "shoal.task.completed"
    capability: str
    output: dict[str, Any] = Field(default_factory=dict)
    attempt: int = Field(default=1, ge=1)
    duration_ms: float = Field(default=0.0, ge=0)


class TaskFailed(EventData):
    """A task attempt failed; ``final`` means no more attempts will be made."""

    type: ClassVar[str] = "shoal.task.failed"
    capability: str
    error: str
    error_type: str = "Error"
    attempt: int = Field(default=1, ge=1)
    final: bool = True


# -- model and tool calls ------------------------------------------------------------------


class ModelCalled(EventData):
    """A model call went through the model gateway (the core prices it, not the agent)."""

    type: ClassVar[str] = "shoal.model.called"
    call_id: str
    model: str
    provider: str
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    latency_ms: float = Field(ge=0)
    finish_reason: str = "stop"
    reported_cost_usd: Money | None = None
    error: str | None = None


class ToolCalled(EventData):
    """A tool call went through the tool gateway; ``arguments`` are already redacted."""

    type: ClassVar[str] = "shoal.tool.called"
    call_id: str
    tool: str
    version: str = "1"
    arguments: dict[str, Any] = Field(default_factory=dict)
    sensitivity: Sensitivity = "internal"
    result_class: Literal["ok", "error", "denied", "timeout"] = "ok"
    latency_ms: float = Field(default=0.0, ge=0)
    side_effects: list[str] = Field(default_factory=list)
    error: str | None = None
    # A keyed hash (HMAC) of the real arguments, taken before redaction: the core compares it
    # for equality only (looping). Absent (an older or plain emitter): the recorded arguments.
    arguments_digest: str | None = Field(default=None, max_length=128)


# -- agents, sessions, budgets, outcomes ----------------------------------------------------


class AgentStarted(EventData):
    """An agent instance came up and subscribed to its capabilities."""

    type: ClassVar[str] = "shoal.agent.started"
    version: str
    capabilities: list[str]
    host: str = ""
    pid: int = 0


class AgentStopped(EventData):
    """An agent instance shut down (drained or asked to stop)."""

    type: ClassVar[str] = "shoal.agent.stopped"
    reason: str = ""


class AgentKilled(EventData):
    """An agent instance was killed by an operator or the core."""

    type: ClassVar[str] = "shoal.agent.killed"
    by: str
    reason: str = ""
    # The IIDs whose running work the kill interrupted (set when the instance reports it).
    interrupted: list[str] = Field(default_factory=list)


class AgentCrashLooping(EventData):
    """A supervisor gave up restarting an instance slot that exits at start every time."""

    type: ClassVar[str] = "shoal.agent.crashlooping"
    supervisor: str
    host: str = ""
    slot: int = Field(ge=0)
    version: str = ""
    exits: int = Field(ge=1)
    exit_code: int | None = None
    message: str = ""


class SessionMessage(EventData):
    """A person (or another front end) appended a message to a running session.

    With ``reply_to`` it answers the agent's question of that id (``session.asked``).
    """

    type: ClassVar[str] = "shoal.session.message"
    text: str = Field(max_length=100_000)
    by: str
    reply_to: str | None = None


class SessionAsked(EventData):
    """The agent asked a person a question and waits for the reply (``awaiting_input``)."""

    type: ClassVar[str] = "shoal.session.asked"
    question_id: str
    question: str = Field(max_length=100_000)
    timeout_s: float | None = None


class SessionKilled(EventData):
    """A session (IID) was killed: no further model or tool call may run in it."""

    type: ClassVar[str] = "shoal.session.killed"
    by: str
    reason: str = ""
    # The IIDs whose running work the kill interrupted (set when the instance reports it).
    interrupted: list[str] = Field(default_factory=list)


class SessionFlagged(EventData):
    """The core found a session stuck (silent too long) or looping (repeating itself)."""

    type: ClassVar[str] = "shoal.session.flagged"
    flag: Literal["stuck", "looping"]
    reason: str


class BudgetExceeded(EventData):
    """Recorded spend crossed a budget; the core sets the scope's kill switch."""

    type: ClassVar[str] = "shoal.budget.exceeded"
    scope: Literal["session", "goal", "fleet"]
    key: str
    budget_usd: Money
    spent_usd: Money


class OutcomeReported(EventData):
    """Feedback on a session's result, possibly hours later (CI passed, PR merged…)."""

    type: ClassVar[str] = "shoal.outcome.reported"
    outcome: Outcome
    signal: str | None = None
    detail: str = ""


# -- operator commands (audit, on the control subjects) -------------------------------------


class ControlAccepted(EventData):
    """An operator command was accepted and applied."""

    type: ClassVar[str] = "shoal.control.accepted"
    command: str
    target: str = ""
    by: str
    reason: str = ""
    detail: dict[str, Any] = Field(default_factory=dict)


class ControlRefused(EventData):
    """An operator command was refused; ``reason`` says why."""

    type: ClassVar[str] = "shoal.control.refused"
    command: str
    target: str = ""
    by: str
    reason: str


EVENT_TYPES: dict[str, type[EventData]] = {
    cls.type: cls
    for cls in (
        GoalSubmitted,
        GoalPlanned,
        GoalCompleted,
        GoalFailed,
        TaskAssigned,
        TaskStarted,
        TaskCompleted,
        TaskFailed,
        ModelCalled,
        ToolCalled,
        PolicyDecided,
        PolicyApplied,
        ApprovalRequested,
        ApprovalGranted,
        ApprovalDenied,
        AgentStarted,
        AgentStopped,
        AgentKilled,
        AgentCrashLooping,
        SessionKilled,
        SessionFlagged,
        SessionMessage,
        SessionAsked,
        EvaluationRegressed,
        EvaluationPassed,
        BudgetExceeded,
        OutcomeReported,
        ControlAccepted,
        ControlRefused,
    )
}
"""Every event type shoal knows, by its full CloudEvents ``type``."""
