"""The checks both gateways run before a call: kill switches, the manifest, approval, budget.

Order matters: a kill switch wins over everything (it is the operator's brake), then the
manifest (a call the agent was never allowed), then approval, then the budget. Every refusal
is recorded as ``policy.decided`` *before* the typed error is raised, so the deny is on the
bus even if the handler catches the error and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shoal.agents.errors import ApprovalRequired, BudgetExhausted, Killed, PolicyDenied
from shoal.agents.killswitch import KillWatcher, kill_keys
from shoal.agents.session import Emitter, Identity, Session
from shoal.schemas import ApprovalRequested, PolicyDecided, new_id
from shoal.schemas.manifest import CapabilityManifest

__all__ = ["Action", "Policy"]

Action = Literal["model.call", "tool.call", "delegate"]


@dataclass
class Policy:
    """Decides whether ``session`` may make a call, recording every refusal."""

    identity: Identity
    manifest: CapabilityManifest
    kills: KillWatcher
    emitter: Emitter

    async def check(self, session: Session, action: Action, target: str) -> None:
        """Raise a :class:`PolicyDenied` subclass (after emitting it) unless allowed."""
        scope = session.scope(self.identity)
        hit = self.kills.match(
            kill_keys(
                scope,
                tool=target if action == "tool.call" else None,
                model=target if action == "model.call" else None,
            )
        )
        if hit is not None:
            key, switch = hit
            why = f"kill switch {key} set by {switch.by}" + (
                f": {switch.reason}" if switch.reason else ""
            )
            await self._refuse(session, action, target, Killed(why, key=key, target=target))
        kind = action.split(".")[0]
        if not self._allowed(action, target):
            rule = f"manifest.{kind}"
            why = f"{kind} {target!r} is not in the capability manifest of {self.identity.agent}"
            await self._refuse(session, action, target, PolicyDenied(why, rule=rule, target=target))
        if self.manifest.needs_approval(f"{kind}.{target}"):
            why = f"{kind} {target!r} needs a human's approval"
            await self._refuse(
                session,
                action,
                target,
                ApprovalRequired(why, rule="manifest.approval", target=target),
                decision="needs_approval",
            )
        remaining = session.remaining_usd
        if remaining is not None and remaining <= 0:
            why = f"session {session.iid} spent ${session.spent_usd} of ${session.budget_usd}"
            await self._refuse(
                session, action, target, BudgetExhausted(why, rule="budget.session", target=target)
            )

    def _allowed(self, action: Action, target: str) -> bool:
        if action == "model.call":
            return self.manifest.allows_model(target)
        if action == "tool.call":
            return self.manifest.grant(target) is not None
        return self.manifest.allows_delegation(target)

    async def _refuse(
        self,
        session: Session,
        action: Action,
        target: str,
        error: PolicyDenied,
        decision: Literal["deny", "needs_approval"] = "deny",
    ) -> None:
        decided = PolicyDecided(
            action=action, target=target, decision=decision, rule=error.rule, reason=str(error)
        )
        await self.emitter.emit(decided, session)
        if decision == "needs_approval":
            # The request an approver acts on; the call itself does not run (no resume yet).
            request = ApprovalRequested(
                request_id=new_id(), action=action, target=target, reason=str(error)
            )
            await self.emitter.emit(request, session)
        raise error
