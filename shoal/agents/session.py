"""Who an instance is, which session a call belongs to, and how events get their envelope.

:class:`Identity` is the instance (fleet, agent, instance id, version); :class:`Session` is
the unit of work a call belongs to (IID, GID, parent, principal, budget and spend);
:class:`Emitter` wraps a payload in a CloudEvent carrying both and publishes it to the event
log. Every event an agent emits goes through :meth:`Emitter.emit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property

from shoal.agents.killswitch import Scope
from shoal.bus import Bus, check_token, event_headers
from shoal.bus.tracecontext import current_traceparent, with_traceparent
from shoal.schemas import CloudEvent, EventData, Labels, new_id, utcnow

__all__ = ["Emitter", "Identity", "Session"]


@dataclass(frozen=True)
class Identity:
    """One agent instance: ``source`` is ``shoal://<fleet>/<agent>/<instance>``."""

    fleet: str
    agent: str
    instance: str
    version: str = "0"

    def __post_init__(self) -> None:
        for what in ("fleet", "agent", "instance"):
            check_token(getattr(self, what), what)

    @cached_property
    def source(self) -> str:
        return f"shoal://{self.fleet}/{self.agent}/{self.instance}"


@dataclass
class Session:
    """The session (IID) a handler works in, with its budget and what it has spent so far.

    Spend is this instance's own estimate, for the budget check before each call; the core
    prices calls itself from ``model.called``.
    """

    iid: str
    gid: str | None = None
    parentiid: str | None = None
    principal: str | None = None
    budget_usd: Decimal | None = None
    spent_usd: Decimal = Decimal(0)
    goal_budget_usd: Decimal | None = None  # the goal's, stated to the gateway per call
    labels: Labels | None = None  # attribution, passed on to every task it delegates

    def scope(self, identity: Identity) -> Scope:
        return Scope(
            instance=identity.instance,
            fleet=identity.fleet,
            iid=self.iid,
            gid=self.gid,
            parentiid=self.parentiid,
            principal=self.principal,
        )

    @property
    def remaining_usd(self) -> Decimal | None:
        return None if self.budget_usd is None else self.budget_usd - self.spent_usd


class Emitter:
    """Publishes an instance's events to the event log with the full envelope."""

    def __init__(self, bus: Bus, identity: Identity) -> None:
        self.bus = bus
        self.identity = identity

    def event(self, data: EventData, session: Session, *, id: str | None = None) -> CloudEvent:
        """The CloudEvent for ``data`` in ``session``, emitted by this instance.

        Built without re-validation (this is the hot path: two events per task): every part
        is already valid — ``data`` is a validated payload, the session's ids come from a
        validated event or :func:`new_id`, the identity's tokens were checked at start.
        """
        ident = self.identity
        return CloudEvent.model_construct(
            specversion="1.0",
            id=id or new_id(),
            source=ident.source,
            type=data.type,
            time=utcnow(),
            datacontenttype="application/json",
            iid=session.iid,
            gid=session.gid,
            parentiid=session.parentiid,
            fleet=ident.fleet,
            agent=ident.agent,
            instance=ident.instance,
            principal=session.principal,
            traceparent=current_traceparent(),  # its span, if tracing is on (no copy later)
            data=data,
        )

    async def emit(
        self, data: EventData, session: Session, *, id: str | None = None, wait: bool = True
    ) -> CloudEvent:
        """Build and publish; return the event.

        ``wait`` awaits the stream's ack (the event is stored when this returns). Without it
        the event is published fire-and-forget (the stream stores it but sends no ack): for
        progress events whose loss in a failure is harmless (``task.started``), on the hot
        path, where skipping the ack saves a message and a future per task.
        """
        event = self.event(data, session, id=id)
        if wait:
            await self.bus.publish(event)
        else:
            event = with_traceparent(event)  # as Bus.publish does
            await self.bus.nc.publish(
                self.bus.event_subject(event), event.to_json(), headers=event_headers(event)
            )
        return event
