"""Policy in the gateways: the same Cedar rules and risk tiers as the SDK (shoal.policy).

Evaluated after the kill switches and the key's manifest, before routing and the budget
reservation. ``deny`` answers 403 (``policy_denied``) and is recorded as ``policy.decided``
naming the rule and the policy version. ``high`` parks the request on an approval keyed by
the exact request (session + action + target + arguments), exactly as the SDK does: a grant
lets it through, a deny or a timeout answers 403. ``low`` and ``medium`` are allowed and
recorded; ``medium`` also queues a review item.

A replica that stops (a restart, a scale-down) releases its parked calls at once with 503
``approval_pending`` (``x-should-retry: true``) instead of holding its shutdown for them:
the approval stays pending in the bucket, and the retried call, on any replica, finds it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.gateway.caller import Caller
from shoal.gateway.errors import GatewayError
from shoal.gateway.record import Recorder
from shoal.policy import Approvals, ApprovalState, CallFacts, PolicyBook, Verdict
from shoal.schemas import PolicyDecided

__all__ = ["GatewayPolicy"]


class GatewayPolicy:
    """The applied policies and the approvals bucket, as one gateway replica sees them."""

    def __init__(
        self,
        book: PolicyBook,
        approvals: Approvals,
        recorder: Recorder,
        *,
        approval_timeout_s: float,
        digest_key: bytes | None = None,
    ) -> None:
        self.book = book
        self.approvals = approvals
        self.recorder = recorder
        self.approval_timeout_s = approval_timeout_s
        self.digest_key = digest_key
        self._stopping = asyncio.Event()

    def release(self) -> None:
        """Let go of every parked call (answered 503, retryable): the replica is stopping."""
        self._stopping.set()

    async def check(
        self, caller: Caller, action: str, target: str, arguments: dict[str, Any]
    ) -> None:
        """Return if the call may go on; raise :class:`GatewayError` if not (recorded)."""
        key = caller.key
        verdict = self.book.decide(
            CallFacts(
                action=action,
                target=target,
                arguments=arguments,
                principal=caller.principal,
                fleet=key.fleet,
                agent=key.agent,
                instance=caller.instance,
            )
        )
        if verdict is None or verdict.outcome == "allow":
            return
        if verdict.outcome == "deny":
            await self._decided(caller, action, target, verdict, "deny")
            raise GatewayError.policy_denied(verdict.reason, verdict.rule)
        if verdict.outcome in ("low", "medium"):
            await self._decided(caller, action, target, verdict, "allow")
            if verdict.outcome == "medium":
                state = self._state(caller, action, target, arguments, verdict, timeout=None)
                await self.approvals.request(state, source=self.recorder.source)
            return
        state = self._state(caller, action, target, arguments, verdict, self.approval_timeout_s)
        await self._decided(caller, action, target, verdict, "needs_approval")
        state = await self.approvals.request(state, source=self.recorder.source)
        final = await self._wait(state.id, verdict.rule)
        if final.state == "granted" and final.request_hash == state.request_hash:
            return
        why = (
            f"approval {final.id} for {action} {target!r} timed out"
            if final.state == "expired"
            else f"approval {final.id} for {action} {target!r} was denied by {final.decided_by}"
        )
        raise GatewayError.policy_denied(why, verdict.rule)

    async def _wait(self, approval: str, rule: str) -> ApprovalState:
        waiting = asyncio.ensure_future(self.approvals.wait(approval, source=self.recorder.source))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((waiting, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not waiting.done():
                waiting.cancel()
        if not waiting.done() or waiting.cancelled():
            raise GatewayError.released(
                f"approval {approval} is pending and this gateway replica is stopping: "
                "retry the call (it finds the same approval)",
                rule,
            )
        return waiting.result()

    async def _decided(
        self, caller: Caller, action: str, target: str, verdict: Verdict, decision: str
    ) -> None:
        data = PolicyDecided.model_validate(
            {
                "action": action,
                "target": target,
                "decision": decision,
                "rule": verdict.rule,
                "reason": verdict.reason,
                "tier": verdict.tier,
                "policy_version": verdict.version,
            }
        )
        await self.recorder.emit(data, caller)

    def _state(
        self,
        caller: Caller,
        action: str,
        target: str,
        arguments: dict[str, Any],
        verdict: Verdict,
        timeout: float | None,
    ) -> ApprovalState:
        return ApprovalState.for_request(
            iid=caller.iid,
            action=action,
            target=target,
            arguments=arguments,
            shown={},  # model prompts are not shown to approvers by the gateway
            tier="high" if verdict.outcome == "high" else "medium",
            rule=verdict.rule,
            policy_version=verdict.version,
            timeout_s=timeout,
            digest_key=self.digest_key,
            gid=caller.gid,
            parentiid=caller.parentiid,
            fleet=caller.key.fleet,
            agent=caller.key.agent,
            instance=caller.instance,
            principal=caller.principal,
            approver_role=verdict.approver,
        )
