"""Whom the core believes: the subject matches the event, and the sender may send it.

An event is folded only if its subject names the same IID, GID and type as its envelope, and
its sender is the core, the CLI, a supervisor, or an agent instance the core saw start and
not killed. Everything else is refused with a reason (recorded on its session when it has
one, dead-lettered when it has none; see :mod:`shoal.aggregates.processor`).

The gateways record the calls they carry themselves, under call ids of their own
(:data:`GATEWAY_CALL_PREFIX`, returned to the caller in ``x-shoal-call-id``). Only a gateway
issues such an id, so an agent's ``model.called`` or ``tool.called`` that carries one claims
a call the gateway records: it is refused whatever it says and in whichever order it
arrives, and the gateway's own record is the one counted, once.

A source is the identity whose credentials published the event: the broker lets each user
publish only under its own subject suffix and :func:`check_subject` holds the envelope to it
(docs/security.md). What an instance reports about its own work — that it started, the model
and tool calls it made — is believed only from that instance or a gateway: an operator
(``shoal://cli/…``) or a supervisor claiming it would charge or register an instance it is
not.
"""

from __future__ import annotations

from functools import lru_cache

from shoal.aggregates.instance import Instance
from shoal.bus import Subjects
from shoal.bus.subjects import NO_GID, publisher_tokens
from shoal.errors import InvalidEvent
from shoal.schemas import (
    AgentKilled,
    AgentStarted,
    CloudEvent,
    GoalFailed,
    ModelCalled,
    TaskFailed,
    ToolCalled,
)

__all__ = ["CORE_SOURCE", "GATEWAY_CALL_PREFIX", "GATEWAY_SOURCE", "check_subject", "distrust"]

CORE_SOURCE = "shoal://core"
SUPERVISOR_SOURCE = "shoal://supervisor/"
GATEWAY_SOURCE = "shoal://gateway/"
"""The gateways record the calls they saw themselves (shoal.gateway.record)."""
_SERVICE_PREFIXES = (CORE_SOURCE, "shoal://cli/", SUPERVISOR_SOURCE, GATEWAY_SOURCE)
_NOT_FOR_OTHERS = (AgentStarted, ModelCalled, ToolCalled)
"""Reports only the instance itself (or a gateway, for calls) makes."""
GATEWAY_CALL_PREFIX = "gw-"
"""The call ids only a gateway issues: ``model.called``/``tool.called`` under one of them
count only from the gateway itself."""


def check_subject(subjects: Subjects, subject: str, ev: CloudEvent) -> None:
    """Raise :class:`InvalidEvent` unless ``subject`` is the event's own subject."""
    # The usual case, decided by one string comparison: the subject is exactly the one the
    # event's own fields and source make (every type is two tokens: noun.verb).
    claimed = _publisher(ev.source)
    if (
        ev.gid != NO_GID
        and subject
        == f"{subjects.prefix}.events.{ev.gid or NO_GID}.{ev.iid}.{ev.short_type}.{claimed}"
        and (
            not claimed.startswith("agent.")
            or claimed == f"agent.{ev.fleet}.{ev.agent}.{ev.instance}"
        )
    ):
        return
    parts = subjects.parse_event(subject)
    if parts.iid != ev.iid or parts.gid != ev.gid or parts.short_type != ev.short_type:
        raise InvalidEvent(
            f"subject {subject!r} does not match the event "
            f"(iid {ev.iid!r}, gid {ev.gid!r}, type {ev.type!r})"
        )
    # Attribution: the broker let only the holder of this identity publish this subject.
    wrong = subjects.misattributed(parts.publisher, ev.source, ev.fleet, ev.agent, ev.instance)
    if wrong is not None:
        raise InvalidEvent(f"forged attribution: {wrong}")


_publisher = lru_cache(maxsize=65_536)(publisher_tokens)
"""``publisher_tokens`` by source: a core sees a few sources (one per instance) many times."""


def distrust(ev: CloudEvent, instances: dict[str, Instance]) -> str | None:
    """Why the core refuses this event, or ``None`` if it is believed."""
    if ev.source.startswith(GATEWAY_SOURCE):
        return None
    d = ev.data
    if isinstance(d, ModelCalled | ToolCalled) and d.call_id.startswith(GATEWAY_CALL_PREFIX):
        return f"call {d.call_id} went through a gateway: its record counts, not this claim"
    if ev.source.startswith(_SERVICE_PREFIXES):
        if isinstance(d, _NOT_FOR_OTHERS) and ev.source != CORE_SOURCE:
            return f"{ev.type} is reported by an instance or a gateway, not by {ev.source!r}"
        return None
    if not ev.instance:
        return f"source {ev.source!r} is neither an instance, a service, the CLI nor the core"
    known = instances.get(ev.instance)
    if ev.type == AgentStarted.type:
        return (
            "instance was killed; a killed id cannot start again"
            if (known is not None and not known.trusted)
            else None
        )
    if known is None:
        return f"unknown instance {ev.instance!r} (no agent.started seen)"
    if not known.trusted and not _acknowledges_its_kill(ev):
        return f"instance {ev.instance!r} was killed"
    return None


def _acknowledges_its_kill(ev: CloudEvent) -> bool:
    """What a killed instance still says, and is believed: that it stopped because of the
    kill — its own ``agent.killed`` listing what it interrupted, and the ``task.failed`` /
    ``goal.failed`` that settle the work it dropped (docs/agents.md §2). Nothing else."""
    d = ev.data
    if isinstance(d, AgentKilled):
        return True
    if isinstance(d, TaskFailed):
        return d.error_type == "Killed"
    if isinstance(d, GoalFailed):
        return d.reason.startswith("Killed:")
    return False
