"""The gateway's own records on the event log: ``model.called``, ``tool.called``,
``policy.decided``, attributed to the caller and emitted by ``shoal://gateway/<replica>``.

The core believes these (the gateway saw the upstream's own usage) and prices them from its
price table; the ``reported_cost_usd`` of a gateway record is the gateway's price from the
same table (on a cache hit: the price of the answer it reused, i.e. the money saved).
"""

from __future__ import annotations

from shoal.bus import Bus
from shoal.bus.tracecontext import current_traceparent
from shoal.gateway.caller import Caller
from shoal.schemas import CloudEvent, EventData, PolicyDecided, new_id, utcnow

__all__ = ["GATEWAY_SOURCE", "Recorder"]

GATEWAY_SOURCE = "shoal://gateway/"
"""Prefix of every gateway replica's ``source``; the core trusts it as it trusts the CLI."""


class Recorder:
    """Publishes events on behalf of callers, awaiting each ack (nothing lost on a crash
    after the client saw its answer: the record is stored before the handler returns)."""

    def __init__(self, bus: Bus, replica: str) -> None:
        self.bus = bus
        self.source = f"{GATEWAY_SOURCE}{replica}"

    def event(self, data: EventData, caller: Caller) -> CloudEvent:
        key = caller.key
        # Built without re-validation, as the agents' emitter does: every part is checked
        # (the key's tokens at creation, the headers in Caller.of, data by its model).
        return CloudEvent.model_construct(
            specversion="1.0",
            id=new_id(),
            source=self.source,
            type=data.type,
            time=utcnow(),
            datacontenttype="application/json",
            iid=caller.iid,
            gid=caller.gid,
            parentiid=caller.parentiid,
            fleet=key.fleet,
            agent=key.agent,
            instance=caller.instance,
            principal=caller.principal,
            traceparent=current_traceparent(),
            data=data,
        )

    async def emit(self, data: EventData, caller: Caller) -> CloudEvent:
        event = self.event(data, caller)
        await self.bus.publish(event)
        return event

    async def refused(
        self, caller: Caller, action: str, target: str, rule: str, reason: str
    ) -> CloudEvent:
        """Record a refusal (``policy.decided``, decision ``deny``)."""
        decided = PolicyDecided.model_validate(
            {"action": action, "target": target, "decision": "deny", "rule": rule, "reason": reason}
        )
        return await self.emit(decided, caller)
