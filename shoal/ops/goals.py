"""Submitting goals to a fleet (library side of ``shoal goal submit``)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from shoal.bus import Bus
from shoal.bus.telemetry import goal_sampled
from shoal.bus.tracecontext import current_traceparent, goal_context
from shoal.errors import InvalidEvent, InvalidOption, UnknownTarget
from shoal.ops.targets import fleet_exists
from shoal.schemas import CloudEvent, GoalSubmitted, Labels, describe_validation_error, new_id

__all__ = ["build_goal", "parse_inputs", "submit_goal"]


def parse_inputs(raw: str | None) -> dict[str, Any]:
    """Goal inputs given as a JSON object on the command line."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidEvent(f"--inputs is not valid JSON: {e.msg} at column {e.colno}") from e
    if not isinstance(value, dict):
        raise InvalidEvent('--inputs must be a JSON object, e.g. \'{"folder": "docs"}\'')
    return value


def build_goal(
    fleet: str,
    text: str,
    *,
    principal: str,
    inputs: dict[str, Any] | None = None,
    budget_usd: str | None = None,
    labels: Labels | None = None,
) -> CloudEvent:
    """A ``goal.submitted`` event with a new GID and IID and the goal's trace, validated."""
    try:
        budget = Decimal(budget_usd) if budget_usd is not None else None
    except InvalidOperation as e:
        raise InvalidEvent(f"--budget {budget_usd!r} is not a number of dollars") from e
    if budget is not None and (not budget.is_finite() or budget < 0):
        raise InvalidOption(f"--budget {budget_usd}: a budget is zero or more dollars")
    gid = new_id()
    try:
        data = GoalSubmitted(
            fleet=fleet, text=text, inputs=inputs or {}, budget_usd=budget, labels=labels
        )
        return CloudEvent.new(
            data,
            iid=new_id(),
            gid=gid,
            # The goal's trace: its id follows from the GID, so every process that works on
            # the goal joins one trace whether or not the submitter traces; whether it is
            # recorded is decided here, once, by the configured sampler.
            traceparent=current_traceparent(goal_context(gid, sampled=goal_sampled(gid))),
            fleet=fleet,
            principal=principal,
            source=f"shoal://cli/{principal}",
        )
    except ValidationError as e:
        raise InvalidEvent(f"invalid goal: {describe_validation_error(e)}") from e


async def submit_goal(bus: Bus, event: CloudEvent, *, require_fleet: bool = False) -> int:
    """Record the goal on the event log and put it on the fleet's goal subject; return seq.

    With ``require_fleet`` (the CLI, unless ``--wait-for-fleet``), a goal for a fleet that
    is neither declared nor running is refused: it would wait forever unseen. Without it the
    goal stays on the fleet's goal subject until a fleet takes it (a fleet starting up).
    """
    assert event.fleet is not None
    if require_fleet and not await fleet_exists(bus, event.fleet):
        raise UnknownTarget(
            f"no fleet {event.fleet!r} is declared or running, so nothing would take the "
            "goal: apply a fleet spec first, or pass --wait-for-fleet to queue it"
        )
    ack = await bus.record(event, bus.subjects.goals(event.fleet))
    return int(ack.seq)
