"""Approvals: a high-risk call parks until a human grants or denies exactly that request.

Each request is one document in the ``<P>_approvals`` bucket, keyed by an id derived from the
session and the **hash of the exact request** (action, target, arguments as canonical JSON).
So the same call asked again — a redelivered task after a crash of its instance, a
restarted gateway — finds the same approval (pending, granted or denied) instead of asking
twice, while a changed request has another hash, another id, and needs its own approval.

State changes are compare-and-set on the key's revision, so two approvers (or an approver
and the timeout) cannot both win: ``pending`` becomes ``granted``, ``denied`` or ``expired``
once. Every step is also an event on the session's timeline (``approval.requested``,
``approval.granted``, ``approval.denied`` with ``expired`` for a timeout), with
deterministic ids, so a step recorded twice is de-duplicated by JetStream.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta
from typing import Any, Literal

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

from shoal.bus import Bus
from shoal.errors import NotFound, ShoalError
from shoal.schemas import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    CloudEvent,
    RiskTier,
    utcnow,
)

__all__ = [
    "ApprovalState",
    "Approvals",
    "NotPending",
    "approval_id",
    "deadline_after",
    "request_hash",
]

State = Literal["pending", "granted", "denied", "expired"]

_DECIDERS = ("shoal://cli/", "shoal://core")
"""Sources whose ``approval.granted`` counts: an operator (CLI, console, the interactions
endpoints on their behalf); never an instance or a gateway."""

log = logging.getLogger("shoal.approvals")


class NotPending(ShoalError):
    """The approval was already decided (or expired): it cannot be decided again."""

    code = "not_pending"


def request_hash(
    action: str, target: str, arguments: dict[str, Any], key: bytes | None = None
) -> str:
    """The exact request's hash: HMAC-SHA256 under ``key`` of its canonical JSON.

    Keyed, because it is published (``approval.requested``) while the arguments are shown
    redacted: without the key, nobody can test guesses of a short secret argument against
    it. The key is the deployment's tool-digest key (``SHOAL_TOOL_DIGEST_KEY``), the same
    on every host, so a task redelivered to another instance finds the same approval.
    ``None`` (tests, benches) falls back to plain sha256.
    """
    canonical = json.dumps(
        [action, target, arguments], sort_keys=True, separators=(",", ":"), default=str
    ).encode()
    if key is None:
        return hashlib.sha256(canonical).hexdigest()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def prompt_arguments(messages: Any, key: bytes | None = None) -> dict[str, str]:
    """A model call's arguments for its policy check: a keyed digest of its messages.

    So a grant covers exactly the prompt that was asked about, and a changed prompt needs a
    new approval, as a tool's changed arguments do. Only the digest is shown to approvers and
    published, keyed as :func:`request_hash` is, so it cannot be tested against guesses. The
    SDK and the gateway digest the same ``[{"role", "content"}, ...]`` list and so find the
    same approval for one call.
    """
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), default=str).encode()
    if key is None:
        return {"prompt_digest": hashlib.sha256(canonical).hexdigest()}
    return {"prompt_digest": hmac.new(key, canonical, hashlib.sha256).hexdigest()}


def approval_id(iid: str, digest: str) -> str:
    """The approval's id: the same session asking the same request gets the same one."""
    return "apr-" + hashlib.sha256(f"{iid}:{digest}".encode()).hexdigest()[:20]


class ApprovalState(BaseModel):
    """One approval request and its decision (the bucket document)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    state: State = "pending"
    iid: str
    gid: str | None = None
    parentiid: str | None = None
    fleet: str | None = None
    agent: str | None = None
    instance: str | None = None
    principal: str | None = None
    action: str
    target: str
    tier: RiskTier = "high"
    rule: str = ""
    policy_version: str | None = None
    approver_role: str = "operator"
    arguments: dict[str, Any] = Field(default_factory=dict)
    """For display only: redacted by the tool's sensitivity."""
    request_hash: str
    requested_at: datetime
    deadline: datetime | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str = ""

    @classmethod
    def for_request(
        cls,
        *,
        iid: str,
        action: str,
        target: str,
        arguments: dict[str, Any],
        shown: dict[str, Any],
        tier: RiskTier,
        rule: str,
        policy_version: str | None,
        timeout_s: float | None,
        digest_key: bytes | None,
        **where: str | None,
    ) -> ApprovalState:
        """A new pending request for this exact call (``where``: gid, parentiid, fleet,
        agent, instance, principal); ``shown`` is what approvers see of ``arguments``."""
        digest = request_hash(action, target, arguments, digest_key)
        return cls.model_validate(
            {
                "id": approval_id(iid, digest),
                "iid": iid,
                "action": action,
                "target": target,
                "tier": tier,
                "rule": rule,
                "policy_version": policy_version,
                "arguments": shown,
                "request_hash": digest,
                "requested_at": utcnow(),
                "deadline": deadline_after(timeout_s),
                **where,
            }
        )

    @property
    def wait_s(self) -> float | None:
        """Seconds from request to decision (``None`` while pending)."""
        if self.decided_at is None:
            return None
        return (self.decided_at - self.requested_at).total_seconds()


class Approvals:
    """The approvals bucket: request, wait, decide, list."""

    def __init__(self, bus: Bus, kv: KeyValue) -> None:
        self.bus = bus
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus) -> Approvals:
        return cls(bus, await bus.kv(bus.topology.approvals.name))

    # -- the agent's side -------------------------------------------------------------------
    async def request(self, state: ApprovalState, *, source: str) -> ApprovalState:
        """Create the request, or return the existing one with the same id."""
        try:
            await self.kv.create(state.id, state.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            existing, _ = await self._get(state.id)
            return existing
        data = ApprovalRequested(
            request_id=state.id,
            action=state.action,
            target=state.target,
            reason=f"rule {state.rule!r}: risk tier {state.tier}",
            tier=state.tier,
            rule=state.rule,
            policy_version=state.policy_version,
            arguments=state.arguments,
            request_hash=state.request_hash,
            timeout_s=(
                (state.deadline - state.requested_at).total_seconds() if state.deadline else None
            ),
        )
        await self._record(data, state, source=source, event_id=f"{state.id}-requested", mine=True)
        return state

    async def wait(self, approval: str, *, source: str, poll_s: float = 5.0) -> ApprovalState:
        """Wait until the approval is decided; expire it (and say so) at its deadline.

        ``source`` is the waiting caller's (the instance or gateway that asked): a timeout is
        recorded by whoever waited for it.
        """
        watcher = await self.kv.watch(approval)
        try:
            while True:
                current, revision = await self._get(approval)
                if current.state == "granted" and not await self._grant_recorded(current):
                    # Marked granted in the bucket, with no operator's grant on the log: not
                    # a grant (the bucket is writable by more than approvers; the log's
                    # approval.granted can be published only under an operator's identity).
                    log.warning("approval %s marked granted without a recorded grant", approval)
                    return current.model_copy(
                        update={"state": "denied", "reason": "granted without a recorded grant"}
                    )
                if current.state != "pending":
                    return current
                left = poll_s
                if current.deadline is not None:
                    left = min(left, (current.deadline - utcnow()).total_seconds())
                    if left <= 0:
                        return await self._expire(current, revision, source)
                try:
                    await watcher.updates(timeout=max(left, 0.01))  # type: ignore[no-untyped-call]
                except TimeoutError:
                    pass
                except Exception as e:  # nats-py raises its own TimeoutError subclass
                    if "Timeout" not in type(e).__name__:
                        raise
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def _grant_recorded(self, state: ApprovalState, wait_s: float = 5.0) -> bool:
        """True once the event log holds the ``approval.granted`` of this request by its
        decider (published right after the bucket's update: it may trail it briefly)."""
        subject = self.bus.subjects.session_events_of_type(state.iid, "approval.granted")
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            for stored in await self.bus.read(subject):
                d = stored.event.data if stored.event is not None else None
                if isinstance(d, ApprovalGranted) and d.request_id == state.id:
                    return stored.event is not None and stored.event.source.startswith(_DECIDERS)
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.02)

    async def _expire(self, state: ApprovalState, revision: int, source: str) -> ApprovalState:
        expired = state.model_copy(
            update={"state": "expired", "decided_at": utcnow(), "reason": "timed out"}
        )
        try:
            await self.kv.update(state.id, expired.model_dump_json().encode(), last=revision)
        except KeyWrongLastSequenceError:
            current, _ = await self._get(state.id)  # decided just in time by someone
            return current
        data = ApprovalDenied(request_id=state.id, by="timeout", reason="timed out", expired=True)
        await self._record(data, expired, source=source, event_id=f"{state.id}-decided", mine=True)
        return expired

    # -- the approver's side ------------------------------------------------------------------
    async def decide(self, approval: str, *, grant: bool, by: str, reason: str) -> ApprovalState:
        """Grant or deny a pending approval (once); :class:`NotPending` if already decided."""
        for _ in range(5):
            current, revision = await self._get(approval)
            if current.state != "pending":
                raise NotPending(
                    f"approval {approval} is already {current.state}"
                    + (f" by {current.decided_by}" if current.decided_by else "")
                )
            decided = current.model_copy(
                update={
                    "state": "granted" if grant else "denied",
                    "decided_by": by,
                    "decided_at": utcnow(),
                    "reason": reason,
                }
            )
            try:
                await self.kv.update(approval, decided.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue
            data: ApprovalGranted | ApprovalDenied = (
                ApprovalGranted(request_id=approval, by=by, reason=reason)
                if grant
                else ApprovalDenied(request_id=approval, by=by, reason=reason)
            )
            await self._record(
                data, decided, source=f"shoal://cli/{by}", event_id=f"{approval}-decided"
            )
            return decided
        raise NotPending(f"approval {approval} kept changing while it was being decided")

    async def get(self, approval: str) -> ApprovalState:
        return (await self._get(approval))[0]

    async def list(
        self,
        *,
        fleet: str | None = None,
        tier: str | None = None,
        states: tuple[str, ...] = ("pending",),
    ) -> list[ApprovalState]:
        """Approvals in the given states, oldest first."""
        try:
            keys = await self.kv.keys()
        except Exception as e:  # nats-py: NoKeysError when the bucket is empty
            if "NoKeys" in type(e).__name__:
                return []
            raise
        found = []
        for key in keys:
            try:
                state, _ = await self._get(key)
            except NotFound:
                continue
            if state.state in states and (fleet is None or state.fleet == fleet):
                if tier is None or state.tier == tier:
                    found.append(state)
        return sorted(found, key=lambda s: s.requested_at)

    # -- internals ---------------------------------------------------------------------------------
    async def _get(self, approval: str) -> tuple[ApprovalState, int]:
        try:
            entry = await self.kv.get(approval)
        except KeyNotFoundError as e:
            raise NotFound(f"no approval {approval!r}") from e
        if entry.value is None:
            raise NotFound(f"no approval {approval!r}")
        return ApprovalState.model_validate_json(entry.value), entry.revision or 0

    async def _record(
        self, data: Any, state: ApprovalState, *, source: str, event_id: str, mine: bool = False
    ) -> None:
        # ``mine``: recorded by the requester itself, so it names its agent and instance.
        event = CloudEvent.new(
            data,
            iid=state.iid,
            gid=state.gid,
            parentiid=state.parentiid,
            source=source,
            fleet=state.fleet,
            agent=state.agent if mine else None,
            instance=state.instance if mine else None,
            principal=state.principal,
            id=event_id,
        )
        await self.bus.publish(event)


def deadline_after(timeout_s: float | None) -> datetime | None:
    """The deadline of a request made now that waits ``timeout_s`` (``None``: forever)."""
    return None if timeout_s is None else utcnow() + timedelta(seconds=timeout_s)
