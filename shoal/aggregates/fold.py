"""How one bus event changes one Session: the translation shared by ingestion and replay.

:func:`open_session` starts a session from the first event of its IID; :func:`apply_event`
turns a validated CloudEvent into the Session's own events (pricing model calls from the
core's table on the way). Everything that spans aggregates — trust, goals, instances,
budgets, loop detection — is the ingestion's business (:mod:`shoal.aggregates.ingestion`);
``replay`` uses only this module, on a fresh aggregate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from shoal.aggregates.pricing import DEFAULT_MODEL, PriceTable
from shoal.aggregates.session import Session
from shoal.schemas import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    BudgetExceeded,
    CloudEvent,
    GoalCompleted,
    GoalFailed,
    ModelCalled,
    OutcomeReported,
    PolicyDecided,
    SessionAsked,
    SessionFlagged,
    SessionKilled,
    SessionMessage,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    ToolCalled,
)

__all__ = ["actor", "apply_event", "open_session", "tool_signature"]


def actor(ev: CloudEvent) -> str:
    """Who emitted an event, for humans: ``agent/instance`` or the source."""
    if ev.agent and ev.instance:
        return f"{ev.agent}/{ev.instance}"
    return ev.source.removeprefix("shoal://")


def tool_signature(tool: str, arguments: dict[str, object], digest: str | None = None) -> str:
    """A short stable hash of a tool and its arguments: equal calls, equal hash.

    ``digest`` (``tool.called``'s ``arguments_digest``, keyed by the emitter) stands for the
    real arguments: redacted ones make different calls of a secret tool look the same.
    """
    key = [tool, arguments] if digest is None else [tool, "digest", digest]
    canonical = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def open_session(ev: CloudEvent, seq: int) -> Session:
    """A new Session from the first event of its IID."""
    return Session(
        iid=ev.iid,
        gid=ev.gid,
        parentiid=ev.parentiid,
        fleet=ev.fleet,
        principal=ev.principal,
        source=ev.source,
        seq=seq,
        timestamp=ev.time,
    )


def apply_event(
    s: Session,
    ev: CloudEvent,
    seq: int,
    prices: PriceTable,
    *,
    agent_version: str | None = None,
) -> Decimal | None:
    """Record ``ev`` on ``s``; return the server-side cost if it was a model call.

    ``agent_version`` is the emitting instance's release as the core registered it; a
    ``task.started`` records it. Types that change nothing on a session (``agent.*``,
    ``goal.submitted``…) are ignored.
    """
    if ev.type == TaskStarted.type:
        _task_started(s, ev, seq, agent_version)
        return None
    handler = _HANDLERS.get(ev.type)
    if handler is None:
        return None
    return handler(s, ev, seq, prices)


def _context(s: Session, ev: CloudEvent, seq: int) -> dict[str, Any]:
    # Who and where, on every call/decision event, so a projection needs no other event.
    return {
        "seq": seq,
        "event_id": ev.id,
        "gid": s.gid or ev.gid,
        "fleet": s.fleet or ev.fleet,
        "agent": ev.agent,
        "instance": ev.instance,
        "principal": s.principal or ev.principal,
        "timestamp": ev.time,
    }


def _task_assigned(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, TaskAssigned)
    labels = d.labels.values() if d.labels is not None else None
    s.task_assigned(seq, d.capability, d.budget_usd, ev.source, timestamp=ev.time, labels=labels)


def _task_started(s: Session, ev: CloudEvent, seq: int, agent_version: str | None) -> None:
    d = ev.data
    assert isinstance(d, TaskStarted)
    s.task_started(
        seq,
        d.capability,
        d.attempt,
        ev.agent,
        ev.instance,
        timestamp=ev.time,
        agent_version=agent_version,
    )


def _task_completed(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, TaskCompleted)
    summary = str(d.output.get("summary", ""))[:200] if d.output else ""
    s.task_completed(seq, d.attempt, d.duration_ms, summary, timestamp=ev.time)


def _task_failed(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, TaskFailed)
    s.task_failed(seq, d.attempt, d.error[:500], d.error_type, d.final, timestamp=ev.time)


def _model_called(s: Session, ev: CloudEvent, seq: int, prices: PriceTable) -> Decimal:
    d = ev.data
    assert isinstance(d, ModelCalled)
    cost = prices.cost(d.model, d.input_tokens, d.output_tokens, d.cached_tokens)
    s.trigger_event(
        Session.ModelCalled,
        **_context(s, ev, seq),
        call_id=d.call_id,
        model=d.model,
        provider=d.provider,
        input_tokens=d.input_tokens,
        output_tokens=d.output_tokens,
        cached_tokens=d.cached_tokens,
        latency_ms=d.latency_ms,
        finish_reason=d.finish_reason,
        cost_usd=cost,
        reported_cost_usd=d.reported_cost_usd,
        priced_as=d.model if prices.is_listed(d.model) else DEFAULT_MODEL,
        error=d.error,
    )
    return cost


def _tool_called(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, ToolCalled)
    s.trigger_event(
        Session.ToolCalled,
        **_context(s, ev, seq),
        call_id=d.call_id,
        tool=d.tool,
        version=d.version,
        arguments=d.arguments,
        signature=tool_signature(d.tool, d.arguments, d.arguments_digest),
        sensitivity=d.sensitivity,
        result_class=d.result_class,
        latency_ms=d.latency_ms,
        side_effects=list(d.side_effects),
        error=d.error,
    )


def _policy_decided(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, PolicyDecided)
    s.trigger_event(
        Session.PolicyDecided,
        **_context(s, ev, seq),
        action=d.action,
        target=d.target,
        decision=d.decision,
        rule=d.rule,
        reason=d.reason,
    )


def _asked(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, SessionAsked)
    s.input_requested(seq, d.question_id, d.question[:500], timestamp=ev.time)


def _message(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, SessionMessage)
    resumed = s.answers(d.reply_to)
    s.message_received(seq, d.by, d.reply_to, d.text[:500], resumed, timestamp=ev.time)


def _approval(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    if isinstance(d, ApprovalRequested):
        state, by, action, target = "requested", ev.source, d.action, d.target
    else:
        assert isinstance(d, ApprovalGranted | ApprovalDenied)
        if isinstance(d, ApprovalGranted):
            state = "granted"
        else:
            state = "expired" if d.expired else "denied"
        by, action, target = d.by, "", ""
    s.trigger_event(
        Session.ApprovalChanged,
        seq=seq,
        request_id=d.request_id,
        state=state,
        by=by,
        action=action,
        target=target,
        reason=d.reason,
        timestamp=ev.time,
    )


def _session_killed(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, SessionKilled)
    if s.status != "killed":
        s.killed(seq, d.by, d.reason, timestamp=ev.time)


def _session_flagged(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, SessionFlagged)
    if d.flag not in s.flags:
        s.flagged(seq, d.flag, d.reason, timestamp=ev.time)


def _budget_exceeded(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    # The core's own crossing was recorded when it happened; this is its echo from the bus
    # (or another component's report), applied only if the session does not know it yet.
    d = ev.data
    assert isinstance(d, BudgetExceeded)
    if d.scope == "session" and not s.budget_exceeded:
        s.record_budget_exceeded(seq, d.scope, d.key, d.budget_usd, d.spent_usd, timestamp=ev.time)


def _outcome(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    assert isinstance(d, OutcomeReported)
    s.outcome_reported(seq, d.outcome, d.signal, d.detail, ev.source, timestamp=ev.time)


def _goal_closed(s: Session, ev: CloudEvent, seq: int, _: PriceTable) -> None:
    d = ev.data
    if isinstance(d, GoalCompleted):
        s.closed(seq, "completed", d.summary[:200], timestamp=ev.time)
    else:
        assert isinstance(d, GoalFailed)
        s.closed(seq, "failed", d.reason[:200], timestamp=ev.time)


_Handler = Callable[[Session, CloudEvent, int, PriceTable], Decimal | None]

_HANDLERS: dict[str, _Handler] = {
    TaskAssigned.type: _task_assigned,
    TaskCompleted.type: _task_completed,
    TaskFailed.type: _task_failed,
    ModelCalled.type: _model_called,
    ToolCalled.type: _tool_called,
    PolicyDecided.type: _policy_decided,
    ApprovalRequested.type: _approval,
    SessionAsked.type: _asked,
    SessionMessage.type: _message,
    ApprovalGranted.type: _approval,
    ApprovalDenied.type: _approval,
    SessionKilled.type: _session_killed,
    SessionFlagged.type: _session_flagged,
    BudgetExceeded.type: _budget_exceeded,
    OutcomeReported.type: _outcome,
    GoalCompleted.type: _goal_closed,
    GoalFailed.type: _goal_closed,
}
