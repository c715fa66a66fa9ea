"""Policy as code: Cedar policies with shoal's risk tiers, compiled once, evaluated per call.

A policy file is `Cedar <https://www.cedarpolicy.com>`_ text (evaluated by ``cedarpy``, the
Cedar engine's Python binding). shoal adds three annotations and one default:

- ``@id("name")`` names a rule; the name is what ``policy.decided`` reports.
- ``@tier("low" | "medium" | "high")`` on a ``permit`` makes it a risk tier: ``low`` allows
  and audits, ``medium`` allows and queues the call for review after the fact, ``high``
  parks the call until a human approves it.
- ``@approver("admin")`` on a ``high`` permit: only that role may grant (else ``operator``).
- A ``forbid`` that matches denies (Cedar's own rule: forbid wins).
- Where no rule of the file matches, the call is allowed (the manifest already allow-listed
  it): shoal appends ``@id("default") permit(principal, action, resource);``.

The request a rule sees is built by :func:`cedar_request` (see docs/policy.md): principal
``Principal::"<principal>"``, action ``Action::"model" | "tool" | "delegate" | "mcp_server"``,
resource ``Model::"…"``, ``Tool::"…"``, ``Capability::"…"`` or ``McpServer::"…"``, and a
context with the caller's fleet, agent, version and instance, the real arguments, the tool's
sensitivity and side effects, and facts derived from the arguments (paths, URL domains, the
SQL verb).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import cedarpy

from shoal.errors import USAGE_EXIT, ShoalError

__all__ = [
    "ACTIONS",
    "CallFacts",
    "CompiledPolicy",
    "InvalidPolicy",
    "Verdict",
    "cedar_request",
    "compile_policy",
]

Outcome = Literal["allow", "deny", "low", "medium", "high"]
ActionKind = Literal["model", "tool", "delegate", "mcp_server"]

ACTIONS: dict[str, tuple[ActionKind, str]] = {
    "model.call": ("model", "Model"),
    "tool.call": ("tool", "Tool"),
    "delegate": ("delegate", "Capability"),
    "mcp_server.call": ("mcp_server", "McpServer"),
}
"""Gateway action → (Cedar action id, Cedar resource type)."""

_TIERS = ("low", "medium", "high")
_RANK = {"allow": 0, "low": 1, "medium": 2, "high": 3}
DEFAULT_RULE = "default"
_DEFAULT_PERMIT = f'\n@id("{DEFAULT_RULE}")\npermit(principal, action, resource);\n'
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_SQL_VERB = re.compile(r"^\s*([A-Za-z]+)")


APPROVER_ROLES = ("operator", "admin")
"""Roles a rule may name as its approver: those that can record a grant (a viewer cannot)."""


class InvalidPolicy(ShoalError):
    """A policy file is not valid Cedar, or uses an annotation shoal does not know."""

    code = "invalid_policy"
    exit_code = USAGE_EXIT


@dataclass(frozen=True)
class CallFacts:
    """Everything about one call a rule may match on."""

    action: str
    target: str
    arguments: dict[str, Any] = field(default_factory=dict)
    principal: str | None = None
    fleet: str | None = None
    agent: str | None = None
    agent_version: str | None = None
    instance: str | None = None
    sensitivity: str | None = None
    side_effects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """What the policy decided for one call, and by which rule of which version."""

    outcome: Outcome
    rule: str
    version: str
    reason: str
    approver: str = "operator"
    """The role a grant needs (``@approver`` on a ``high`` rule; else ``operator``)."""

    @property
    def tier(self) -> Literal["low", "medium", "high"] | None:
        return self.outcome if self.outcome in _TIERS else None  # type: ignore[return-value]


@dataclass(frozen=True)
class CompiledPolicy:
    """A parsed policy set: rule names and tiers by Cedar policy id, and its version."""

    policies: cedarpy.PolicySet
    names: dict[str, str]
    tiers: dict[str, str]
    effects: dict[str, str]
    version: str
    digest: str
    approvers: dict[str, str] = field(default_factory=dict)

    @property
    def rules(self) -> list[str]:
        """The rule names of the file, in order (without the implicit default)."""
        return [name for name in self.names.values() if name != DEFAULT_RULE]

    def evaluate(self, facts: CallFacts) -> Verdict:
        """Decide one call."""
        result = cedarpy.is_authorized(cedar_request(facts), self.policies, [])
        reasons = list(result.diagnostics.reasons)
        if str(result.decision) != "Decision.Allow":
            forbids = sorted(
                (r for r in reasons if self.effects.get(r) == "forbid"), key=_policy_index
            )
            rule = self.names.get(forbids[0], forbids[0]) if forbids else DEFAULT_RULE
            why = f"denied by rule {rule!r}"
            if result.diagnostics.errors:
                why += f" ({'; '.join(str(e) for e in result.diagnostics.errors)[:200]})"
            return Verdict("deny", rule, self.version, why)
        # The highest tier among the permits that matched; a named rule before the default.
        best_rank, best, best_rule, approver = -1, "allow", DEFAULT_RULE, "operator"
        for r in sorted(reasons, key=_policy_index):
            outcome, name = self.tiers.get(r, "allow"), self.names.get(r, r)
            rank = _RANK[outcome] * 2 + (name != DEFAULT_RULE)
            if rank > best_rank:
                best_rank, best, best_rule = rank, outcome, name
                approver = self.approvers.get(r, "operator")
            elif rank == best_rank and self.approvers.get(r) == "admin":
                approver = "admin"  # two high rules matched: the stricter approver holds
        reason = f"rule {best_rule!r}" + (f": risk tier {best}" if best != "allow" else "")
        return Verdict(best, best_rule, self.version, reason, approver)  # type: ignore[arg-type]


def compile_policy(text: str, *, version: str = "draft") -> CompiledPolicy:
    """Parse Cedar text with shoal's annotations; :class:`InvalidPolicy` naming the problem."""
    full = text + _DEFAULT_PERMIT
    try:
        policies = cedarpy.PolicySet.from_str(full)
        doc = json.loads(cedarpy.policies_to_json_str(full))
    except (ValueError, RuntimeError) as e:
        raise InvalidPolicy(f"policy is not valid Cedar: {e}") from e
    names: dict[str, str] = {}
    tiers: dict[str, str] = {}
    effects: dict[str, str] = {}
    approvers: dict[str, str] = {}
    for pid, body in (doc.get("staticPolicies") or {}).items():
        annotations = body.get("annotations") or {}
        unknown = sorted(set(annotations) - {"id", "tier", "approver"})
        if unknown:
            raise InvalidPolicy(
                f"policy {pid}: unknown annotation @{unknown[0]} (use @id, @tier, @approver)"
            )
        names[pid] = str(annotations.get("id") or pid)
        effects[pid] = str(body.get("effect"))
        tier = annotations.get("tier")
        if tier is not None:
            if tier not in _TIERS:
                raise InvalidPolicy(
                    f"rule {names[pid]!r}: @tier({tier!r}) is not one of low, medium, high"
                )
            if effects[pid] != "permit":
                raise InvalidPolicy(f"rule {names[pid]!r}: @tier goes on a permit, not a forbid")
            tiers[pid] = str(tier)
        approver = annotations.get("approver")
        if approver is not None:
            if tier != "high":
                raise InvalidPolicy(
                    f'rule {names[pid]!r}: @approver goes on a @tier("high") permit'
                )
            if approver not in APPROVER_ROLES:
                raise InvalidPolicy(
                    f"rule {names[pid]!r}: @approver({approver!r}) is not one of operator, admin"
                )
            approvers[pid] = str(approver)
    if doc.get("templates"):
        raise InvalidPolicy("policy templates (?principal/?resource) are not supported")
    repeated = sorted({n for n in names.values() if list(names.values()).count(n) > 1})
    if repeated:
        raise InvalidPolicy(f"rule names must be unique; repeated: {', '.join(repeated)}")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return CompiledPolicy(policies, names, tiers, effects, version, digest, approvers)


def cedar_request(facts: CallFacts) -> dict[str, Any]:
    """The Cedar request for one call (see the module docstring)."""
    kind, resource_type = ACTIONS.get(facts.action, ("tool", "Tool"))
    context: dict[str, Any] = {
        "fleet": facts.fleet or "",
        "agent": facts.agent or "",
        "agent_version": facts.agent_version or "",
        "instance": facts.instance or "",
        "principal": facts.principal or "",
        "sensitivity": facts.sensitivity or "",
        "side_effects": list(facts.side_effects),
        "args": {k: _cedar_value(v) for k, v in facts.arguments.items() if v is not None},
        "paths": sorted(_strings(facts.arguments, lambda s: s.startswith(("/", "./", "~")))),
        "domains": sorted(_domains(facts.arguments)),
        "sql_verb": _sql_verb(facts.arguments),
    }
    return {
        "principal": _uid("Principal", facts.principal or "anonymous"),
        "action": _uid("Action", kind),
        "resource": _uid(resource_type, facts.target),
        "context": context,
    }


def _policy_index(pid: str) -> int:
    digits = pid.removeprefix("policy")
    return int(digits) if digits.isdigit() else 1 << 30


def _uid(kind: str, name: str) -> str:
    return f"{kind}::{json.dumps(name)}"


def _cedar_value(value: Any) -> Any:
    # Cedar has strings, longs, booleans, sets and records; no floats or nulls.
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else str(value)
    if isinstance(value, dict):
        return {str(k): _cedar_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple | set):
        return [_cedar_value(v) for v in value if v is not None]
    return str(value)


def _strings(value: Any, keep: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, str):
        if keep(value):
            found.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            found |= _strings(v, keep)
    elif isinstance(value, list | tuple | set):
        for v in value:
            found |= _strings(v, keep)
    return found


def _domains(arguments: dict[str, Any]) -> set[str]:
    domains = set()
    for url in _strings(arguments, lambda s: bool(_URL.match(s))):
        host = urlsplit(url).hostname
        if host:
            domains.add(host.lower())
    return domains


def _sql_verb(arguments: dict[str, Any]) -> str:
    for key in ("sql", "query", "statement"):
        value = arguments.get(key)
        if isinstance(value, str):
            match = _SQL_VERB.match(value)
            if match:
                return match.group(1).upper()
    return ""
