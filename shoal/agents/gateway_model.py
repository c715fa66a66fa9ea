"""The SDK's client of the model gateway: ``ctx.model`` through ``shoal gateway``.

With ``SHOAL_GATEWAY_URL`` and ``SHOAL_GATEWAY_KEY`` set, an instance's model calls go to
the gateway (:func:`shoal.agents.runtime.default_model_clients`), which checks kill switches,
the key's manifest, rate and budget itself and records ``model.called`` from the upstream's
usage; the SDK then records nothing of its own for the call (``Completion.recorded``).
The SDK's own checks still run first (they cost nothing and refuse early), but they are no
longer what enforces: a handler that catches ``Killed`` and calls again meets the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING

from shoal.agents.errors import BudgetExhausted, Killed, ModelError, PolicyDenied
from shoal.agents.http_model import chat_body, parse_completion
from shoal.agents.models import ChatRequest, Completion
from shoal.bus.tracecontext import inject_headers

if TYPE_CHECKING:
    import httpx

    from shoal.agents.session import Session

__all__ = ["GatewayModelClient", "caller_headers"]


def caller_headers(session: Session) -> tuple[tuple[str, str], ...]:
    """The session headers the gateway reads (see :mod:`shoal.gateway.caller`)."""
    headers = [("X-Shoal-Iid", session.iid)]
    if session.gid:
        headers.append(("X-Shoal-Gid", session.gid))
    if session.parentiid:
        headers.append(("X-Shoal-Parent-Iid", session.parentiid))
    if session.principal and " " not in session.principal and "." not in session.principal:
        headers.append(("X-Shoal-Principal", session.principal))
    if session.budget_usd is not None:
        headers.append(("X-Shoal-Session-Budget", str(session.budget_usd)))
    if session.gid and session.goal_budget_usd is not None:
        headers.append(("X-Shoal-Goal-Budget", str(session.goal_budget_usd)))
    return tuple(headers)


@dataclass
class GatewayModelClient:
    """Every model, through the gateway at ``base_url`` (``…/v1``) with ``api_key``."""

    base_url: str
    api_key: str
    timeout_s: float = 120.0
    provider: str = "shoal-gateway"
    records_calls: bool = True  # the gateway records every call it answers, failed ones too
    _http: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def serves(self, model: str) -> bool:
        return True

    async def complete(self, request: ChatRequest) -> Completion:
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.base_url.rstrip("/") + "/",
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=httpx.Timeout(self.timeout_s),
            )
        try:
            # The trace context rides along, so the gateway's record joins the call's trace.
            headers = inject_headers(dict(request.caller))
            r = await self._http.post("chat/completions", json=chat_body(request), headers=headers)
        except httpx.HTTPError as e:
            raise ModelError(f"gateway {self.base_url}: {type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise _refusal(r, request.model)
        provider = r.headers.get("x-shoal-provider", self.provider)
        completion = parse_completion(r, request, provider, f"gateway {self.base_url}")
        cost = r.headers.get("x-shoal-cost-usd")
        return replace(completion, cost_usd=Decimal(cost) if cost else None, recorded=True)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _refusal(r: httpx.Response, model: str) -> Exception:
    """The gateway's OpenAI-shaped error as the SDK's own typed error."""
    try:
        error = r.json()["error"]
        code, message = str(error.get("code")), str(error.get("message"))
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "", r.text[:200]
    if code == "killed":
        key = message.split()[2] if message.startswith("kill switch ") else "all"
        return Killed(f"gateway: {message}", key=key, target=model)
    if code == "insufficient_quota":
        return BudgetExhausted(f"gateway: {message}", rule="budget.gateway", target=model)
    if r.status_code in (401, 403, 429):
        return PolicyDenied(f"gateway: {message}", rule=f"gateway.{code}", target=model)
    return ModelError(f"gateway: HTTP {r.status_code}: {message}")
