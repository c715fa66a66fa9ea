"""The checks both gateways run before a call: kill switches, the manifest, policy, budget.

Order matters: a kill switch wins over everything (it is the operator's brake), then the
manifest (a call the agent was never allowed), then the applied policy (Cedar rules with
risk tiers: :mod:`shoal.policy`), then approval, then the budget. Every refusal is recorded
as ``policy.decided`` *before* the typed error is raised, so the deny is on the bus even if
the handler catches the error and carries on.

A ``high`` tier (or a manifest's ``requires_approval``) parks the call on an approval keyed
by the exact request (:class:`~shoal.policy.Approvals`): a grant lets exactly that request
through, a deny or a timeout raises :class:`ApprovalDenied`. ``low`` is allowed and audited;
``medium`` is allowed and queued for review (``shoal approvals review``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shoal.agents.errors import (
    ApprovalDenied,
    ApprovalRequired,
    BudgetExhausted,
    Killed,
    PolicyDenied,
)
from shoal.agents.killswitch import KillWatcher, kill_keys
from shoal.agents.session import Emitter, Identity, Session
from shoal.policy import Approvals, ApprovalState, CallFacts, PolicyBook, Verdict
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
    book: PolicyBook | None = None
    """The applied policies (``None``: only the manifest decides)."""
    approvals: Approvals | None = None
    """Where high-tier calls park (``None``: they are refused as needing approval)."""
    approval_timeout_s: float | None = 3600.0
    digest_key: bytes | None = None
    """Keys the published hash of an approval's exact request (the tool-digest key)."""

    async def check(
        self,
        session: Session,
        action: Action,
        target: str,
        arguments: dict[str, Any] | None = None,
        *,
        display: dict[str, Any] | None = None,
        sensitivity: str | None = None,
        side_effects: tuple[str, ...] = (),
    ) -> None:
        """Raise a :class:`PolicyDenied` subclass (after emitting it) unless allowed.

        ``arguments`` are the call's real arguments (rules match on them; a grant covers
        exactly them); ``display`` the same redacted by sensitivity, for approvers.
        """
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
            if action == "delegate":  # deny by default: only the manifest's `delegates`
                why = (
                    f"capability {target!r} not allowed: {self.identity.agent} may delegate "
                    f"only to {list(self.manifest.delegates)} (its manifest's delegates)"
                )
            await self._refuse(session, action, target, PolicyDenied(why, rule=rule, target=target))
        verdict = self._verdict(session, action, target, arguments, sensitivity, side_effects)
        if verdict is not None and verdict.outcome == "deny":
            error = PolicyDenied(verdict.reason, rule=verdict.rule, target=target)
            await self._refuse(session, action, target, error, verdict=verdict)
        needs_approval = self.manifest.needs_approval(f"{kind}.{target}")
        if self.approvals is not None and (
            needs_approval or (verdict is not None and verdict.outcome == "high")
        ):
            await self._approved(session, action, target, arguments or {}, display, verdict)
        elif verdict is not None and verdict.outcome in ("low", "medium"):
            await self._audited(session, action, target, arguments or {}, display, verdict)
        if needs_approval and self.approvals is None:
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

    def _verdict(
        self,
        session: Session,
        action: Action,
        target: str,
        arguments: dict[str, Any] | None,
        sensitivity: str | None,
        side_effects: tuple[str, ...],
    ) -> Verdict | None:
        if self.book is None:
            return None
        return self.book.decide(
            CallFacts(
                action=action,
                target=target,
                arguments=arguments or {},
                principal=session.principal,
                fleet=self.identity.fleet,
                agent=self.identity.agent,
                agent_version=self.identity.version,
                instance=self.identity.instance,
                sensitivity=sensitivity,
                side_effects=side_effects,
            )
        )

    async def _approved(
        self,
        session: Session,
        action: Action,
        target: str,
        arguments: dict[str, Any],
        display: dict[str, Any] | None,
        verdict: Verdict | None,
    ) -> None:
        """Park until a human decides this exact request; return if granted, else raise."""
        assert self.approvals is not None
        state = self._approval(session, action, target, arguments, display, verdict, "high")
        decided = PolicyDecided(
            action=action,
            target=target,
            decision="needs_approval",
            rule=state.rule,
            reason=f"approval {state.id} requested",
            tier="high",
            policy_version=state.policy_version,
        )
        await self.emitter.emit(decided, session)
        state = await self.approvals.request(state, source=self.identity.source)
        final = await self.approvals.wait(state.id, source=self.identity.source)
        if final.state == "granted" and final.request_hash == state.request_hash:
            return
        why = (
            f"approval {final.id} for {action} {target!r} timed out"
            if final.state == "expired"
            else f"approval {final.id} for {action} {target!r} was denied by "
            f"{final.decided_by}" + (f": {final.reason}" if final.reason else "")
        )
        raise ApprovalDenied(why, rule=state.rule, target=target, approval=final.id)

    async def _audited(
        self,
        session: Session,
        action: Action,
        target: str,
        arguments: dict[str, Any],
        display: dict[str, Any] | None,
        verdict: Verdict,
    ) -> None:
        """Allow a low or medium tier call, recorded; medium also waits for a review."""
        decided = PolicyDecided(
            action=action,
            target=target,
            decision="allow",
            rule=verdict.rule,
            reason=verdict.reason,
            tier=verdict.tier,
            policy_version=verdict.version,
        )
        await self.emitter.emit(decided, session)
        if verdict.outcome == "medium" and self.approvals is not None:
            state = self._approval(session, action, target, arguments, display, verdict, "medium")
            await self.approvals.request(state, source=self.identity.source)

    def _approval(
        self,
        session: Session,
        action: Action,
        target: str,
        arguments: dict[str, Any],
        display: dict[str, Any] | None,
        verdict: Verdict | None,
        tier: Literal["medium", "high"],
    ) -> ApprovalState:
        return ApprovalState.for_request(
            iid=session.iid,
            action=action,
            target=target,
            arguments=arguments,
            shown=display if display is not None else arguments,
            tier=tier,
            rule=verdict.rule if verdict else "manifest.approval",
            policy_version=verdict.version if verdict else None,
            timeout_s=self.approval_timeout_s if tier == "high" else None,
            digest_key=self.digest_key,
            gid=session.gid,
            parentiid=session.parentiid,
            fleet=self.identity.fleet,
            agent=self.identity.agent,
            instance=self.identity.instance,
            principal=session.principal,
            approver_role=verdict.approver if verdict else "operator",
        )

    async def _refuse(
        self,
        session: Session,
        action: Action,
        target: str,
        error: PolicyDenied,
        decision: Literal["deny", "needs_approval"] = "deny",
        verdict: Verdict | None = None,
    ) -> None:
        decided = PolicyDecided(
            action=action,
            target=target,
            decision=decision,
            rule=error.rule,
            reason=str(error),
            tier=verdict.tier if verdict else None,
            policy_version=verdict.version if verdict else None,
        )
        await self.emitter.emit(decided, session)
        if decision == "needs_approval":
            # The request an approver acts on; the call itself does not run (no resume yet).
            request = ApprovalRequested(
                request_id=new_id(), action=action, target=target, reason=str(error)
            )
            await self.emitter.emit(request, session)
        raise error
