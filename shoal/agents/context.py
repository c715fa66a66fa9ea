"""What a handler gets: its task's identity, the gateways, delegation, and event emission."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shoal.agents.conversation import Conversation
from shoal.agents.delegation import Delegator
from shoal.agents.gateways import ModelGateway, ToolGateway
from shoal.agents.session import Identity, Session
from shoal.bus import ShoalSettings
from shoal.schemas import CloudEvent, EventData, Labels, PlannedTask, SessionMessage

__all__ = ["TaskContext"]


@dataclass
class TaskContext:
    """One task (or goal) being handled by one instance.

    ``model`` and ``tools`` are the only ways to reach models and tools; ``delegate`` hands
    work to another capability of the fleet and awaits its output.
    """

    identity: Identity
    session: Session
    capability: str
    attempt: int
    model: ModelGateway
    tools: ToolGateway
    delegator: Delegator
    settings: ShoalSettings
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def iid(self) -> str:
        return self.session.iid

    @property
    def gid(self) -> str | None:
        return self.session.gid

    @property
    def parentiid(self) -> str | None:
        return self.session.parentiid

    @property
    def principal(self) -> str | None:
        return self.session.principal

    async def delegate(
        self,
        capability: str,
        input: dict[str, Any],
        *,
        timeout: float | None = 300.0,
        budget_usd: Decimal | None = None,
        labels: Labels | None = None,
    ) -> dict[str, Any]:
        """Run ``capability`` as a child task (same GID, ``parentiid`` = this IID); its output.

        The child carries this session's labels, with ``labels`` set over them."""
        return await self.delegator.delegate(
            capability, input, timeout=timeout, budget_usd=budget_usd, labels=labels
        )

    async def fan_out(
        self, planned: Sequence[PlannedTask], *, timeout: float | None = 300.0
    ) -> list[CloudEvent]:
        """Assign planned child tasks and await each one's terminal event (plan order)."""
        return await self.delegator.fan_out(planned, timeout=timeout)

    async def assign(
        self, capability: str, input: dict[str, Any], *, labels: Labels | None = None
    ) -> str:
        """Publish a child task without waiting; return its IID."""
        return await self.delegator.assign(capability, input, labels=labels)

    @property
    def conversation(self) -> Conversation:
        """This session's messages and questions (see :mod:`shoal.agents.conversation`)."""
        found = self.extra.get("conversation")
        if not isinstance(found, Conversation):
            d = self.delegator
            found = self.extra["conversation"] = Conversation(d.bus, d.emitter, self.session)
        return found

    def messages(self) -> AsyncIterator[SessionMessage]:
        """Messages a person appended to this session: those sent so far, then new ones."""
        return self.conversation.messages()

    async def ask(self, question: str, *, timeout: float | None = None) -> str:
        """Ask a person and wait for the reply (the session is ``awaiting_input`` meanwhile).

        Raises :class:`~shoal.agents.conversation.InputTimeout` if nobody replies in time.
        """
        return await self.conversation.ask(question, timeout=timeout)

    async def emit(self, data: EventData) -> CloudEvent:
        """Record an event of this session (e.g. ``outcome.reported``) on the event log."""
        return await self.delegator.emitter.emit(data, self.session)
