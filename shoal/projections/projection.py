"""The cost-and-outcome projection: the core's Session and Goal events, as DuckDB rows.

:class:`CostProjection` is an ``eventsourcing`` :class:`~eventsourcing.projection.Projection`
whose materialised view is a :class:`~shoal.projections.view.DuckDBCostView`. Each
:meth:`process_event` adds the event's rows to the current :class:`~shoal.projections.batch.Batch`
and remembers its ``Tracking``; :meth:`flush` writes the batch and that one tracking record in
a single DuckDB transaction. A crash before the commit loses the batch *and* its position, so
the events are processed again; a crash after it finds them tracked. Nothing is lost or
counted twice.

The core's events name their session by aggregate id; the projection maps ids back to IIDs
and GIDs from ``Session.Opened`` / ``Goal.Opened`` (kept in the ``sessions`` and ``goals``
tables, so a restarted projection knows them too).
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic

from shoal.aggregates.goal import Goal
from shoal.aggregates.session import Session, session_id
from shoal.projections.money import money
from shoal.projections.rules import labels_of, new_batch
from shoal.projections.view import DuckDBCostView, SessionKey

__all__ = ["DEFAULT_BATCH", "CostProjection", "new_batch"]

DEFAULT_BATCH = 20_000
"""Events per DuckDB transaction when catching up (a live tail flushes sooner)."""

_HANDLERS: dict[type[Any], str] = {
    Session.Opened: "_on_session_opened",
    Session.TaskAssigned: "_on_session_task_assigned",
    Session.TaskStarted: "_on_session_task_started",
    Session.TaskCompleted: "_on_session_task_completed",
    Session.TaskFailed: "_on_session_task_failed",
    Session.Closed: "_on_session_closed",
    Session.ChildAdded: "_on_session_child_added",
    Session.ModelCalled: "_on_session_model_called",
    Session.ToolCalled: "_on_session_tool_called",
    Session.PolicyDecided: "_on_session_policy_decided",
    Session.ApprovalChanged: "_on_session_approval_changed",
    Session.Killed: "_on_session_killed",
    Session.BudgetExceeded: "_on_session_budget_exceeded",
    Session.Flagged: "_on_session_flagged",
    Session.InputRequested: "_on_session_input_requested",
    Session.MessageReceived: "_on_session_message_received",
    Session.OutcomeReported: "_on_session_outcome_reported",
    Session.EventRejected: "_on_session_event_rejected",
    Goal.Opened: "_on_goal_opened",
    Goal.Submitted: "_on_goal_submitted",
    Goal.SessionAdded: "_on_goal_session_added",
    Goal.Planned: "_on_goal_planned",
    Goal.Completed: "_on_goal_completed",
    Goal.Failed: "_on_goal_failed",
    Goal.BudgetExceeded: "_on_goal_budget_exceeded",
    Goal.OutcomeReported: "_on_goal_outcome_reported",
}
"""The core's events the projection reads, and the method that handles each."""


_ARGUMENTS_JSON = json.JSONEncoder(sort_keys=True, default=str).encode
"""Tool arguments as stored: JSON with sorted keys (one encoder, not one per call)."""


def _who(e: Any, iid: str) -> tuple[Any, ...]:
    """The leading columns of every call and decision row: where, when, and who."""
    return (e.seq, e.timestamp, iid, e.gid, e.fleet, e.agent, e.instance, e.principal, e.event_id)


class CostProjection(Projection[DuckDBCostView]):
    """Sessions, goals, calls, decisions and outcomes, for cost and outcome questions."""

    name = "costs"
    topics = tuple(get_topic(cls) for cls in _HANDLERS)

    def __init__(
        self, view: DuckDBCostView, batch_size: int = DEFAULT_BATCH, *, pipelined: bool = False
    ) -> None:
        super().__init__(view)
        self.batch_size = batch_size
        self.batch = new_batch()
        self.tracking: Tracking | None = None
        self.flushed = 0
        # Aggregate id → (IID, GID) and → GID, for events that carry only the aggregate id.
        self._sessions: dict[UUID, SessionKey] = view.session_keys()
        self._goals: dict[UUID, str] = view.goal_keys()
        # GID → its submitted labels: a session of the goal starts with them (its own
        # task's labels then win, column by column), so no query joins goals for them.
        self._goal_labels: dict[str, dict[str, str]] = view.goal_labels()
        self._handlers = {cls: getattr(self, name) for cls, name in _HANDLERS.items()}
        # Pipelined: a writer thread commits batch k while this thread decodes batch k+1
        # (DuckDB releases the GIL while it inserts). One write in flight, in order.
        self._writer = ThreadPoolExecutor(1, "shoal-projection-writer") if pipelined else None
        self._writing: Future[None] | None = None

    # -- the batch --------------------------------------------------------------------------
    def flush(self) -> int:
        """Commit the batch and its last tracking record in one transaction; return its size.

        Pipelined, the commit may still be running when this returns; :meth:`drain` waits.
        """
        if self.tracking is None:
            return 0
        size = len(self.batch)
        batch, tracking = self.batch, self.tracking
        self.batch, self.tracking = new_batch(), None
        if self._writer is None:
            self.view.write(batch, tracking)
        else:
            staged = self.view.stage(batch)
            self.drain()
            self._writing = self._writer.submit(self.view.commit, staged, tracking)
        self.flushed += size
        return size

    def drain(self) -> None:
        """Wait for the write in flight (re-raising its error)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def close(self) -> None:
        """Flush, wait for the last write, and stop the writer thread."""
        try:
            self.flush()
            self.drain()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Drop the batch being built (after an error) and stop the writer thread.

        A write already submitted holds whole events only, so it is let finish.
        """
        self.batch, self.tracking = new_batch(), None
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Add the event's rows to the batch (flushing a full batch); track its position."""
        handler = self._handlers.get(type(domain_event))
        if handler is not None:
            handler(domain_event)
        self.tracking = tracking
        self.batch.events += 1
        if self.batch.events >= self.batch_size:
            self.flush()

    def _session(self, e: Any, values: dict[str, Any], created: bool = False) -> SessionKey:
        key = self._sessions[e.originator_id]
        values["last_event_at"] = e.timestamp
        values["last_seq"] = e.seq
        self.batch.states["sessions"].update(key.iid, values, created=created)
        return key

    def _goal(self, e: Any, values: dict[str, Any], created: bool = False) -> str:
        gid = self._goals[e.originator_id]
        values["last_event_at"] = e.timestamp
        values["last_seq"] = e.seq
        self.batch.states["goals"].update(gid, values, created=created)
        return gid

    def _fact(self, table: str, row: tuple[Any, ...]) -> None:
        self.batch.facts[table].add(row)

    # -- events -----------------------------------------------------------------------------

    def _on_session_opened(self, e: Session.Opened) -> None:
        root = e.gid is not None and e.parentiid is None
        self._sessions[e.originator_id] = SessionKey(e.iid, e.gid, root)
        inherited = self._goal_labels.get(e.gid, {}) if e.gid is not None else {}
        self._session(
            e,
            {
                **inherited,
                "session_id": str(e.originator_id),
                "gid": e.gid,
                "parentiid": e.parentiid,
                "fleet": e.fleet,
                "principal": e.principal,
                "source": e.source,
                "status": "open",
                "opened_at": e.timestamp,
                "first_seq": e.seq,
            },
            created=True,
        )

    def _on_session_task_assigned(self, e: Session.TaskAssigned) -> None:
        values = {"capability": e.capability, "budget_usd": money(e.budget_usd)}
        self._session(e, {**values, **labels_of(e)})

    def _on_session_task_started(self, e: Session.TaskStarted) -> None:
        values = {
            "capability": e.capability,
            "agent": e.agent,
            "instance": e.instance,
            "attempts": e.attempt,
            "status": "running",
            "started_at": e.timestamp,
            "agent_version": getattr(e, "agent_version", None),
        }
        self._session(e, values)

    def _on_session_task_completed(self, e: Session.TaskCompleted) -> None:
        self._session(e, {"status": "completed", "ended_at": e.timestamp})

    def _on_session_task_failed(self, e: Session.TaskFailed) -> None:
        values: dict[str, Any] = {"errors": 1}
        if e.final:
            values.update(status="failed", ended_at=e.timestamp)
        self._session(e, values)

    def _on_session_closed(self, e: Session.Closed) -> None:
        self._session(e, {"status": e.status, "ended_at": e.timestamp})

    def _on_session_child_added(self, e: Session.ChildAdded) -> None:
        self._session(e, {})

    def _on_session_model_called(self, e: Session.ModelCalled) -> None:
        cost, reported = money(e.cost_usd), money(e.reported_cost_usd)
        iid, _, _ = self._session(
            e,
            {
                "model_calls": 1,
                "input_tokens": e.input_tokens,
                "output_tokens": e.output_tokens,
                "cached_tokens": e.cached_tokens,
                "cost_usd": cost,
                "reported_cost_usd": reported,
                "errors": 1 if e.error else None,
                "model": e.model,
            },
        )
        if e.gid is not None:
            # The goal's spend, kept on its row so outcome questions need no join per call.
            self.batch.states["goals"].update(e.gid, {"model_calls": 1, "cost_usd": cost})
        self._fact(
            "model_calls",
            (
                *_who(e, iid),
                e.call_id,
                e.model,
                e.provider,
                e.input_tokens,
                e.output_tokens,
                e.cached_tokens,
                e.latency_ms,
                e.finish_reason,
                cost,
                reported,
                e.priced_as,
                e.error,
            ),
        )

    def _on_session_tool_called(self, e: Session.ToolCalled) -> None:
        failed = e.error or e.result_class in ("error", "timeout")
        values = {"tool_calls": 1, "errors": 1 if failed else None, "tools": [e.tool]}
        iid, _, _ = self._session(e, values)
        arguments = _ARGUMENTS_JSON(e.arguments)
        self._fact(
            "tool_calls",
            (
                *_who(e, iid),
                e.call_id,
                e.tool,
                e.version,
                arguments,
                e.signature,
                e.sensitivity,
                e.result_class,
                e.latency_ms,
                list(e.side_effects),
                e.error,
            ),
        )

    def _on_session_policy_decided(self, e: Session.PolicyDecided) -> None:
        iid, _, _ = self._session(e, {"denials": 1 if e.decision == "deny" else None})
        self._fact(
            "policy_decisions",
            (
                *_who(e, iid),
                e.action,
                e.target,
                e.decision,
                e.rule,
                e.reason,
            ),
        )

    def _on_session_approval_changed(self, e: Session.ApprovalChanged) -> None:
        requested = 1 if e.state == "requested" else None
        iid, gid, _ = self._session(e, {"approvals_requested": requested})
        row = (e.seq, e.timestamp, iid, gid, e.request_id, e.state, e.by, e.action, e.target)
        self._fact("approvals", (*row, e.reason))

    def _on_session_killed(self, e: Session.Killed) -> None:
        values = {"status": "killed", "killed_by": e.by, "kill_reason": e.reason}
        self._session(e, {**values, "ended_at": e.timestamp})

    def _on_session_budget_exceeded(self, e: Session.BudgetExceeded) -> None:
        values: dict[str, Any] = {}
        if e.scope == "session":
            values = {
                "budget_exceeded": True,
                "status": "killed",
                "killed_by": "shoal://core",
                "kill_reason": f"budget ${e.budget_usd} exceeded (spent ${e.spent_usd})",
            }
        self._session(e, values)

    def _on_session_input_requested(self, e: Session.InputRequested) -> None:
        self._session(e, {"status": "awaiting_input", "asks": 1})

    def _on_session_message_received(self, e: Session.MessageReceived) -> None:
        self._session(e, {"status": "running"} if getattr(e, "resumed", False) else {})

    def _on_session_flagged(self, e: Session.Flagged) -> None:
        flag = e.flag if e.flag in ("stuck", "looping") else None
        self._session(e, {flag: True} if flag else {})

    def _on_session_outcome_reported(self, e: Session.OutcomeReported) -> None:
        values = {"outcome": e.outcome, "outcome_signal": e.signal, "outcome_at": e.timestamp}
        iid, gid, root = self._session(e, values)
        if root and gid is not None:
            # The root session's reported outcome stands for its goal's.
            self.batch.states["goals"].update(gid, {"root_outcome": e.outcome})
        self._fact("outcomes", (e.seq, e.timestamp, iid, gid, e.outcome, e.signal, e.detail, e.by))

    def _on_session_event_rejected(self, e: Session.EventRejected) -> None:
        self._session(e, {"rejected": 1})

    # -- goals ------------------------------------------------------------------------------
    def _on_goal_opened(self, e: Goal.Opened) -> None:
        self._goals[e.originator_id] = e.gid
        values = {
            "goal_id": str(e.originator_id),
            "status": "open",
            "opened_at": e.timestamp,
            "first_seq": e.seq,
        }
        self._goal(e, values, created=True)

    def _on_goal_submitted(self, e: Goal.Submitted) -> None:
        labels = labels_of(e)
        values = {
            "fleet": e.fleet,
            "principal": e.principal,
            "text": e.text,
            "root_iid": e.root_iid,
            "budget_usd": money(e.budget_usd),
            "status": "running",
            "submitted_at": e.timestamp,
            **labels,
        }
        gid = self._goal(e, values)
        if labels:
            self._goal_labels[gid] = labels
            # The root session may be open already; its row then takes the labels too.
            if session_id(e.root_iid) in self._sessions:
                self.batch.states["sessions"].update(e.root_iid, labels)

    def _on_goal_session_added(self, e: Goal.SessionAdded) -> None:
        self._goal(e, {"sessions": 1})

    def _on_goal_planned(self, e: Goal.Planned) -> None:
        self._goal(e, {"status": "running"})

    def _on_goal_completed(self, e: Goal.Completed) -> None:
        self._goal(e, {"status": "completed", "summary": e.summary, "ended_at": e.timestamp})

    def _on_goal_failed(self, e: Goal.Failed) -> None:
        values = {"status": "failed", "failure_reason": e.reason, "ended_at": e.timestamp}
        self._goal(e, values)

    def _on_goal_budget_exceeded(self, e: Goal.BudgetExceeded) -> None:
        self._goal(e, {"budget_exceeded": True})

    def _on_goal_outcome_reported(self, e: Goal.OutcomeReported) -> None:
        self._goal(e, {"outcome": e.outcome, "outcome_signal": e.signal})
