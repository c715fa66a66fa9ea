"""The Session aggregate: one interaction (IID), everything that happened in it, in order.

State changes only through the nested past-tense events below, each applied by its
``@event`` method. Events carry the figures a cost/outcome projection needs (who, which
model, how many tokens, the server-side cost and the agent's claim, the stream sequence),
so a projection never has to load an aggregate. The aggregate itself stays lean: counters
and totals, not lists of calls, so a session with thousands of events snapshots small.

Every ingested event takes its ``timestamp`` from the CloudEvent's ``time`` and carries the
JetStream ``seq`` it came from: ingesting the same stream twice records identical events.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

__all__ = ["SESSION_STATUSES", "Session", "session_id", "stable_id"]

SESSION_STATUSES = ("open", "running", "completed", "failed", "killed")
"""``open``: assigned or seen, no attempt started; ``killed`` is terminal."""

_ZERO = Decimal(0)
_SIGNATURES_KEPT = 256


def stable_id(kind: str, name: str) -> UUID:
    """A deterministic aggregate id: the same name always maps to the same aggregate."""
    return uuid5(NAMESPACE_URL, f"shoal:{kind}:{name}")


def session_id(iid: str) -> UUID:
    """The aggregate id of the session with this IID."""
    return stable_id("session", iid)


class Session(Aggregate):
    """One interaction: its identity, status, calls, decisions, spend and outcome."""

    # Class-level default: a snapshot taken before this counter existed still loads.
    failures_after_completion = 0

    @staticmethod
    def create_id(iid: str) -> UUID:
        return session_id(iid)

    # -- opened -----------------------------------------------------------------------------
    class Opened(Aggregate.Created):
        """The first event of this IID reached the core."""

        iid: str
        gid: str | None
        parentiid: str | None
        fleet: str | None
        principal: str | None
        source: str
        seq: int

    @event(Opened)
    def __init__(
        self,
        iid: str,
        gid: str | None,
        parentiid: str | None,
        fleet: str | None,
        principal: str | None,
        source: str,
        seq: int,
        timestamp: datetime,
    ) -> None:
        self.iid = iid
        self.gid = gid
        self.parentiid = parentiid
        self.fleet = fleet
        self.principal = principal
        self.opened_by = source
        self.first_seq = seq
        self.last_seq = seq
        self.status = "open"
        self.capability: str | None = None
        self.agent: str | None = None
        self.instance: str | None = None
        self.attempts = 0
        self.retries = 0
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self.children: list[str] = []
        self.model_calls = 0
        self.tool_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.cost_usd = _ZERO
        self.reported_cost_usd = _ZERO
        self.cost_by_model: dict[str, Decimal] = {}
        self.decisions: dict[str, int] = {}
        self.denials = 0
        self.approvals: dict[str, str] = {}
        self.errors = 0
        self.failures_after_completion = 0
        self.rejected = 0
        self.awaiting: str | None = None
        """The question the session waits on (``status == "awaiting_input"``)."""
        self.messages = 0
        self.budget_usd: Decimal | None = None
        self.budget_exceeded = False
        self.flags: list[str] = []
        # Looping detection: how often each (tool, arguments) signature was called, and model
        # calls since the last sign of progress (a new tool call, a task event, a delegation).
        self.tool_signatures: dict[str, int] = {}
        self.calls_since_progress = 0
        self.killed_by: str | None = None
        self.kill_reason = ""
        self.outcome: str | None = None
        self.outcome_signal: str | None = None
        self.outcome_at: datetime | None = None
        self.result_summary = ""

    # -- tasks ------------------------------------------------------------------------------
    class TaskAssigned(Aggregate.Event):
        """The task of this session was put on a capability's queue."""

        seq: int
        capability: str
        budget_usd: Decimal | None
        assigned_by: str
        labels: dict[str, str] | None  # attribution (absent from events recorded before it)

    @event(TaskAssigned)
    def task_assigned(
        self,
        seq: int,
        capability: str,
        budget_usd: Decimal | None,
        assigned_by: str,
        timestamp: datetime,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.last_seq = seq
        self.capability = capability
        if budget_usd is not None:
            self.budget_usd = budget_usd
        self.calls_since_progress = 0

    class TaskStarted(Aggregate.Event):
        """An instance began an attempt; a second attempt counts as a retry."""

        seq: int
        capability: str
        attempt: int
        agent: str | None
        instance: str | None
        # The instance's release as the core registered it (``agent.started``), not a claim
        # of this event; absent from events recorded before it.
        agent_version: str | None

    @event(TaskStarted)
    def task_started(
        self,
        seq: int,
        capability: str,
        attempt: int,
        agent: str | None,
        instance: str | None,
        timestamp: datetime,
        agent_version: str | None = None,
    ) -> None:
        self.last_seq = seq
        self.capability = self.capability or capability
        self.agent, self.instance = agent, instance
        self.attempts = max(self.attempts, attempt)
        self.retries = max(self.attempts - 1, 0)
        if self.status != "killed":
            self.status = "running"
        self.started_at = self.started_at or timestamp
        self.calls_since_progress = 0

    class TaskCompleted(Aggregate.Event):
        """The task's handler returned a result."""

        seq: int
        attempt: int
        duration_ms: float
        summary: str

    @event(TaskCompleted)
    def task_completed(
        self, seq: int, attempt: int, duration_ms: float, summary: str, timestamp: datetime
    ) -> None:
        self.last_seq = seq
        if self.status != "killed":
            self.status = "completed"
        self.ended_at = timestamp
        self.result_summary = summary
        self.calls_since_progress = 0

    class TaskFailed(Aggregate.Event):
        """An attempt failed; ``final`` means no attempt follows."""

        seq: int
        attempt: int
        error: str
        error_type: str
        final: bool

    def task_failed(
        self, seq: int, attempt: int, error: str, error_type: str, final: bool, timestamp: datetime
    ) -> None:
        """Record a failed attempt; after ``task.completed`` a failure is kept apart.

        A recorded completion wins: a ``task.failed`` that arrives once the task completed
        (a redelivery after the completing instance died before its ack, reported as lost)
        is recorded as :class:`FailedAfterCompletion` and changes neither the status nor
        the error count, so the session, its projection row and its replay stay completed.
        """
        if self.status == "completed":
            self._failed_after_completion(
                seq, attempt, error, error_type, final, timestamp=timestamp
            )
        else:
            self._task_failed(seq, attempt, error, error_type, final, timestamp=timestamp)

    @event(TaskFailed)
    def _task_failed(
        self, seq: int, attempt: int, error: str, error_type: str, final: bool, timestamp: datetime
    ) -> None:
        self.last_seq = seq
        self.errors += 1
        if final and self.status != "killed":
            self.status = "failed"
            self.ended_at = timestamp
        self.calls_since_progress = 0

    class FailedAfterCompletion(Aggregate.Event):
        """A ``task.failed`` for a task whose completion is already recorded: not applied."""

        seq: int
        attempt: int
        error: str
        error_type: str
        final: bool

    @event(FailedAfterCompletion)
    def _failed_after_completion(
        self, seq: int, attempt: int, error: str, error_type: str, final: bool, timestamp: datetime
    ) -> None:
        self.last_seq = seq
        self.failures_after_completion += 1

    class Closed(Aggregate.Event):
        """The goal this session is the root of completed or failed (``status``)."""

        seq: int
        status: str
        reason: str

    @event(Closed)
    def closed(self, seq: int, status: str, reason: str, timestamp: datetime) -> None:
        self.last_seq = seq
        if self.status != "killed":
            self.status = status
        self.ended_at = self.ended_at or timestamp
        self.result_summary = self.result_summary or reason

    class ChildAdded(Aggregate.Event):
        """A child session (delegation) named this one as its parent."""

        seq: int
        child_iid: str

    @event(ChildAdded)
    def child_added(self, seq: int, child_iid: str, timestamp: datetime) -> None:
        self.children.append(child_iid)
        self.calls_since_progress = 0

    # -- calls and decisions -------------------------------------------------------------------
    class ModelCalled(Aggregate.Event):
        """A model call, priced by the core; ``reported_cost_usd`` is the agent's claim."""

        seq: int
        event_id: str
        call_id: str
        gid: str | None
        fleet: str | None
        agent: str | None
        instance: str | None
        principal: str | None
        model: str
        provider: str
        input_tokens: int
        output_tokens: int
        cached_tokens: int
        latency_ms: float
        finish_reason: str
        cost_usd: Decimal
        reported_cost_usd: Decimal | None
        priced_as: str
        error: str | None

    @event(ModelCalled)
    def model_called(
        self,
        seq: int,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int,
        cost_usd: Decimal,
        reported_cost_usd: Decimal | None,
        error: str | None,
        timestamp: datetime,
    ) -> None:
        self.last_seq = seq
        self.model_calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cached_tokens += cached_tokens
        self.cost_usd += cost_usd
        self.cost_by_model[model] = self.cost_by_model.get(model, _ZERO) + cost_usd
        if reported_cost_usd is not None:
            self.reported_cost_usd += reported_cost_usd
        if error:
            self.errors += 1
        self.calls_since_progress += 1

    class ToolCalled(Aggregate.Event):
        """A tool call; ``signature`` identifies tool + arguments for loop detection."""

        seq: int
        event_id: str
        call_id: str
        gid: str | None
        fleet: str | None
        agent: str | None
        instance: str | None
        principal: str | None
        tool: str
        version: str
        arguments: dict[str, Any]
        signature: str
        sensitivity: str
        result_class: str
        latency_ms: float
        side_effects: list[str]
        error: str | None

    @event(ToolCalled)
    def tool_called(
        self, seq: int, signature: str, result_class: str, error: str | None, timestamp: datetime
    ) -> None:
        self.last_seq = seq
        self.tool_calls += 1
        repeats = self.tool_signatures.pop(signature, 0)
        # Re-inserted last, so the dict stays ordered by recency and can be cut at the front:
        # a long session keeps a bounded snapshot.
        self.tool_signatures[signature] = repeats + 1
        while len(self.tool_signatures) > _SIGNATURES_KEPT:
            del self.tool_signatures[next(iter(self.tool_signatures))]
        if repeats == 0:
            self.calls_since_progress = 0
        if error or result_class in ("error", "timeout"):
            self.errors += 1

    class PolicyDecided(Aggregate.Event):
        """A gateway's decision on an action, and the rule that made it."""

        seq: int
        event_id: str
        gid: str | None
        fleet: str | None
        agent: str | None
        instance: str | None
        principal: str | None
        action: str
        target: str
        decision: str
        rule: str
        reason: str

    @event(PolicyDecided)
    def policy_decided(self, seq: int, decision: str, timestamp: datetime) -> None:
        self.last_seq = seq
        self.decisions[decision] = self.decisions.get(decision, 0) + 1
        if decision == "deny":
            self.denials += 1

    class ApprovalChanged(Aggregate.Event):
        """An approval was requested, granted or denied (``state``)."""

        seq: int
        request_id: str
        state: str
        by: str
        action: str
        target: str
        reason: str

    @event(ApprovalChanged)
    def approval_changed(self, seq: int, request_id: str, state: str, timestamp: datetime) -> None:
        self.last_seq = seq
        self.approvals[request_id] = state
        self.calls_since_progress = 0

    # -- control, flags, outcomes --------------------------------------------------------------
    class Killed(Aggregate.Event):
        """The session was killed (operator or core); no further call may run in it."""

        seq: int
        by: str
        reason: str

    @event(Killed)
    def killed(self, seq: int, by: str, reason: str, timestamp: datetime) -> None:
        self.last_seq = seq
        self.status = "killed"
        self.killed_by, self.kill_reason = by, reason
        self.ended_at = self.ended_at or timestamp

    class BudgetExceeded(Aggregate.Event):
        """Recorded spend crossed a budget that covers this session (session, goal or fleet)."""

        seq: int
        scope: str
        key: str
        budget_usd: Decimal
        spent_usd: Decimal

    @event(BudgetExceeded)
    def record_budget_exceeded(
        self,
        seq: int,
        scope: str,
        key: str,
        budget_usd: Decimal,
        spent_usd: Decimal,
        timestamp: datetime,
    ) -> None:
        if scope == "session":
            self.budget_exceeded = True
            self.status = "killed"
            self.killed_by = "shoal://core"
            self.kill_reason = f"budget ${budget_usd} exceeded (spent ${spent_usd})"

    class Flagged(Aggregate.Event):
        """The core found the session stuck or looping."""

        seq: int
        flag: str
        reason: str

    @event(Flagged)
    def flagged(self, seq: int, flag: str, reason: str, timestamp: datetime) -> None:
        if flag not in self.flags:
            self.flags.append(flag)

    # -- conversation ---------------------------------------------------------------------------
    class InputRequested(Aggregate.Event):
        """The agent asked a person a question; the session waits (``awaiting_input``)."""

        seq: int
        question_id: str
        question: str

    @event(InputRequested)
    def input_requested(
        self, seq: int, question_id: str, question: str, timestamp: datetime
    ) -> None:
        self.last_seq = seq
        if not self.ended:
            self.status = "awaiting_input"
        self.awaiting = question_id

    class MessageReceived(Aggregate.Event):
        """A message was appended to the session (``reply_to``: the question it answers)."""

        seq: int
        by: str
        reply_to: str | None
        text: str
        resumed: bool
        """True when it answered the question the session was waiting on."""

    @event(MessageReceived)
    def message_received(
        self,
        seq: int,
        by: str,
        reply_to: str | None,
        text: str,
        resumed: bool,
        timestamp: datetime,
    ) -> None:
        self.last_seq = seq
        self.messages = getattr(self, "messages", 0) + 1
        if resumed:
            self.awaiting = None
            self.status = "running"

    def answers(self, reply_to: str | None) -> bool:
        """True when a reply to ``reply_to`` resumes this session (it waits on that question)."""
        return (
            reply_to is not None
            and reply_to == getattr(self, "awaiting", None)
            and self.status == "awaiting_input"
        )

    class OutcomeReported(Aggregate.Event):
        """Feedback on the session's result (possibly hours after it ended)."""

        seq: int
        outcome: str
        signal: str | None
        detail: str
        by: str

    @event(OutcomeReported)
    def outcome_reported(
        self, seq: int, outcome: str, signal: str | None, detail: str, by: str, timestamp: datetime
    ) -> None:
        self.outcome, self.outcome_signal, self.outcome_at = outcome, signal, timestamp

    class EventRejected(Aggregate.Event):
        """An event was refused (unknown or killed instance): kept for the record, not applied."""

        seq: int
        event_id: str
        type: str
        source: str
        instance: str | None
        reason: str

    @event(EventRejected)
    def event_rejected(self, seq: int, timestamp: datetime) -> None:
        self.rejected += 1

    # -- queries -----------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        """True once completed, failed or killed."""
        return self.status in ("completed", "failed", "killed")

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view of the state (for ``session show`` and ``--json``)."""
        return {
            "iid": self.iid,
            "gid": self.gid,
            "parentiid": self.parentiid,
            "fleet": self.fleet,
            "principal": self.principal,
            "capability": self.capability,
            "agent": self.agent,
            "instance": self.instance,
            "status": self.status,
            "attempts": self.attempts,
            "retries": self.retries,
            "opened_at": self.created_on.isoformat(),
            "last_event_at": self.modified_on.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "children": list(self.children),
            "model_calls": self.model_calls,
            "tool_calls": self.tool_calls,
            "tokens": {
                "input": self.input_tokens,
                "output": self.output_tokens,
                "cached": self.cached_tokens,
            },
            "cost_usd": str(self.cost_usd),
            "reported_cost_usd": str(self.reported_cost_usd),
            "cost_by_model": {k: str(v) for k, v in self.cost_by_model.items()},
            "decisions": dict(self.decisions),
            "denials": self.denials,
            "approvals": dict(self.approvals),
            "errors": self.errors,
            "failures_after_completion": self.failures_after_completion,
            "rejected": self.rejected,
            "budget_usd": str(self.budget_usd) if self.budget_usd is not None else None,
            "budget_exceeded": self.budget_exceeded,
            "flags": list(self.flags),
            "killed_by": self.killed_by,
            "kill_reason": self.kill_reason,
            "outcome": self.outcome,
            "outcome_signal": self.outcome_signal,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "version": self.version,
        }
