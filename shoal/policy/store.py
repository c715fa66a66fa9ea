"""Applied policies: one document per scope in the policies bucket, watched by every enforcer.

``shoal policy apply FILE [--fleet F]`` writes the file's text to the ``<P>_policies`` bucket
under ``global`` or ``fleet.<F>`` and records ``policy.applied`` (who, why, version) on the
event log. Gateways and SDK runtimes keep a :class:`PolicyBook`: a live mirror of the bucket
with each document compiled once, so the check before a call is a local evaluation.

A call is judged by the global policy and by its fleet's; a deny from either wins, otherwise
the higher risk tier. A version names its scope, the bucket revision it was written at and
the text's digest (``fleet.demo@7:3f2a…``), so a decision says exactly which text made it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from nats.js.kv import KeyValue
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shoal.bus import Bus
from shoal.bus.kvmirror import KvMirror
from shoal.policy.engine import (
    DEFAULT_RULE,
    CallFacts,
    CompiledPolicy,
    InvalidPolicy,
    Verdict,
    compile_policy,
)
from shoal.schemas import CloudEvent, PolicyApplied, is_token, new_id, utcnow

__all__ = ["AppliedPolicy", "PolicyBook", "PolicyDocument", "apply_policy", "policy_key"]


class PolicyDocument(BaseModel):
    """The bucket document of one applied policy (what :meth:`AppliedPolicy.to_json` writes)."""

    model_config = ConfigDict(extra="forbid")
    scope: str
    text: str = Field(description="the policy file as applied (YAML)")
    by: str
    reason: str
    at: AwareDatetime


_RANK = {"allow": 0, "low": 1, "medium": 2, "high": 3, "deny": 4}


def policy_key(fleet: str | None) -> str:
    """The bucket key of a scope: ``global`` or ``fleet.<fleet>``."""
    return f"fleet.{fleet}" if fleet else "global"


@dataclass(frozen=True)
class AppliedPolicy:
    """One applied policy document as stored in the bucket."""

    scope: str
    text: str
    by: str
    reason: str
    at: datetime
    revision: int = 0

    @property
    def version(self) -> str:
        return f"{self.scope}@{self.revision}:{compile_policy(self.text).digest}"

    def to_json(self) -> bytes:
        doc = {"scope": self.scope, "text": self.text, "by": self.by, "reason": self.reason}
        return json.dumps({**doc, "at": self.at.isoformat()}).encode()

    @classmethod
    def from_json(cls, raw: bytes, revision: int) -> AppliedPolicy:
        doc = json.loads(raw)
        return cls(
            scope=str(doc["scope"]),
            text=str(doc["text"]),
            by=str(doc.get("by", "")),
            reason=str(doc.get("reason", "")),
            at=datetime.fromisoformat(doc["at"]),
            revision=revision,
        )


async def apply_policy(
    bus: Bus, text: str, *, fleet: str | None, by: str, reason: str
) -> tuple[AppliedPolicy, CompiledPolicy]:
    """Validate and store a policy, then record ``policy.applied``; return it compiled."""
    if fleet is not None and not is_token(fleet):
        raise InvalidPolicy(f"fleet {fleet!r} is not a valid name (one subject token)")
    compiled = compile_policy(text)  # refuse an invalid file before anything is written
    scope = policy_key(fleet)
    kv = await bus.kv(bus.topology.policies.name)
    doc = AppliedPolicy(scope, text, by, reason, utcnow())
    revision = await kv.put(scope, doc.to_json())
    applied = AppliedPolicy(scope, text, by, reason, doc.at, revision)
    version = f"{scope}@{revision}:{compiled.digest}"
    event = CloudEvent.new(
        PolicyApplied(
            scope=scope,
            version=version,
            digest=compiled.digest,
            rules=compiled.rules,
            by=by,
            reason=reason,
        ),
        iid=f"policy-{new_id()}",
        source=f"shoal://cli/{by}",
        fleet=fleet,
        principal=by,
    )
    await bus.publish(event)
    return applied, compile_policy(text, version=version)


class PolicyBook:
    """The applied policies, mirrored from the bucket and compiled once per revision."""

    def __init__(self, kv: KeyValue) -> None:
        self._compiled: dict[str, CompiledPolicy] = {}
        self.errors: dict[str, str] = {}
        self._mirror = KvMirror(kv, self._changed)

    @classmethod
    async def open(cls, bus: Bus, timeout: float = 5.0) -> PolicyBook:
        book = cls(await bus.kv(bus.topology.policies.name))
        await book._mirror.start(timeout)
        return book

    async def close(self) -> None:
        await self._mirror.stop()

    def _changed(self, key: str) -> None:
        entry = self._mirror.entries.get(key)
        if entry is None:
            self._compiled.pop(key, None)
            return
        try:
            doc = AppliedPolicy.from_json(entry.value, entry.revision)
            self._compiled[key] = compile_policy(doc.text, version=doc.version)
            self.errors.pop(key, None)
        except (InvalidPolicy, ValueError, KeyError) as e:
            # Written by something other than `policy apply`: keep the last good one, say so.
            self.errors[key] = str(e)

    def decide(self, facts: CallFacts) -> Verdict | None:
        """The decision of the applicable policies, or ``None`` when none is applied."""
        verdicts = [
            compiled.evaluate(facts)
            for key in ("global", policy_key(facts.fleet) if facts.fleet else None)
            if key and (compiled := self._compiled.get(key)) is not None
        ]
        if not verdicts:
            return None
        return combine(verdicts)


def combine(verdicts: list[Verdict]) -> Verdict:
    """A deny wins; otherwise the highest tier; a named rule before the default; of two
    ``high`` verdicts, the one whose approver is ``admin``."""
    return max(
        verdicts,
        key=lambda v: (_RANK[v.outcome], v.rule != DEFAULT_RULE, v.approver == "admin"),
    )
