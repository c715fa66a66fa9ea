"""Policy as code (Cedar, with shoal's risk tiers) and human approvals.

- :func:`compile_policy` / :class:`CompiledPolicy` — a policy file parsed once, evaluated per
  call into a :class:`Verdict` (allow, deny, or a risk tier, with the rule and version);
- :class:`PolicyBook` — the applied policies (global and per fleet), mirrored from the
  policies bucket; :func:`apply_policy` writes one and records ``policy.applied``;
- :class:`Approvals` — high-tier calls park on an approval keyed by the exact request's hash.

Between ``bus`` and the parts that enforce (``agents``, ``gateway``) in the dependency order.
"""

from shoal.policy.approvals import (
    Approvals,
    ApprovalState,
    NotPending,
    approval_id,
    prompt_arguments,
    request_hash,
)
from shoal.policy.engine import CallFacts, CompiledPolicy, InvalidPolicy, Verdict, compile_policy
from shoal.policy.store import AppliedPolicy, PolicyBook, apply_policy, policy_key

__all__ = [
    "AppliedPolicy",
    "ApprovalState",
    "Approvals",
    "CallFacts",
    "CompiledPolicy",
    "InvalidPolicy",
    "NotPending",
    "PolicyBook",
    "Verdict",
    "apply_policy",
    "approval_id",
    "compile_policy",
    "policy_key",
    "prompt_arguments",
    "request_hash",
]
