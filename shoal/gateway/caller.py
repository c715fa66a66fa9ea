"""Who is calling: the key's binding plus the session headers a caller may add.

The key fixes fleet, agent, instance and (if bound) principal: headers cannot change them.
A caller may say which session a call belongs to (``X-Shoal-Iid``, ``X-Shoal-Gid``,
``X-Shoal-Parent-Iid``), on whose behalf (``X-Shoal-Principal``, only when the key binds
none), its task class for routing (``X-Shoal-Task-Class``) and the session's and goal's
budgets (``X-Shoal-Session-Budget``, ``X-Shoal-Goal-Budget``). Stated budgets can only
lower a ceiling (see :class:`~shoal.gateway.ledger.Hold`); the key's, the fleet's and the
principal's budgets come from the key, the price table and the gateway file. A call without
a session header belongs to the key's own session (IID = the key id).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from shoal.agents.killswitch import Scope
from shoal.aggregates.pricing import PriceTable
from shoal.bus.genai import Attributes, session_attributes
from shoal.gateway.config import GatewayConfig
from shoal.gateway.errors import GatewayError
from shoal.gateway.keys import VirtualKey
from shoal.gateway.ledger import Hold
from shoal.schemas import is_token

__all__ = ["Caller"]

IID, GID, PARENT = "X-Shoal-Iid", "X-Shoal-Gid", "X-Shoal-Parent-Iid"
PRINCIPAL, TASK_CLASS = "X-Shoal-Principal", "X-Shoal-Task-Class"
SESSION_BUDGET, GOAL_BUDGET = "X-Shoal-Session-Budget", "X-Shoal-Goal-Budget"
CACHE_CONTROL = "X-Shoal-Cache"  # "bypass": neither read nor write the response cache


@dataclass(frozen=True)
class Caller:
    """One call's identity and the budgets it stated."""

    key: VirtualKey
    iid: str
    gid: str | None = None
    parentiid: str | None = None
    principal: str | None = None
    task_class: str | None = None
    session_budget: Decimal | None = None
    goal_budget: Decimal | None = None
    cache_bypass: bool = False

    @classmethod
    def of(cls, key: VirtualKey, headers: Mapping[str, str]) -> Caller:
        """Read the session headers; a malformed one is refused naming the header."""
        principal = key.principal or _token(headers, PRINCIPAL)
        return cls(
            key=key,
            iid=_token(headers, IID) or key.id,
            gid=_token(headers, GID),
            parentiid=_token(headers, PARENT),
            principal=principal,
            task_class=_token(headers, TASK_CLASS),
            session_budget=_usd(headers, SESSION_BUDGET),
            goal_budget=_usd(headers, GOAL_BUDGET),
            cache_bypass=headers.get(CACHE_CONTROL, "").strip().lower() in ("bypass", "no-cache"),
        )

    @property
    def instance(self) -> str:
        return self.key.caller_instance

    @property
    def scope(self) -> Scope:
        """The identities a kill switch can name for this call."""
        return Scope(
            instance=self.instance,
            fleet=self.key.fleet,
            iid=self.iid,
            gid=self.gid,
            parentiid=self.parentiid,
            principal=self.principal,
        )

    def span_attributes(self) -> Attributes:
        """The session attributes of this call's OTel span."""
        key = self.key
        return session_attributes(
            iid=self.iid,
            fleet=key.fleet,
            agent=key.agent,
            instance=self.instance,
            gid=self.gid,
            parentiid=self.parentiid,
            principal=self.principal,
        )

    def holds(self, prices: PriceTable, config: GatewayConfig) -> list[Hold]:
        """Every scope with a limit this call must reserve against."""
        key = self.key
        holds = []
        if key.budget_usd is not None or key.rpm is not None:
            holds.append(Hold(f"key.{key.id}", key.budget_usd, key.rpm))
        if self.session_budget is not None:
            holds.append(Hold(f"session.{self.iid}", self.session_budget, tighten_only=True))
        if self.gid and self.goal_budget is not None:
            holds.append(Hold(f"goal.{self.gid}", self.goal_budget, tighten_only=True))
        fleet_cap = prices.fleet_budgets.get(key.fleet)
        if fleet_cap is not None:
            holds.append(Hold(f"fleet.{key.fleet}", fleet_cap))
        if self.principal and self.principal in config.principal_budgets:
            holds.append(
                Hold(f"principal.{self.principal}", config.principal_budgets[self.principal])
            )
        return holds


def _token(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None or value == "":
        return None
    if not is_token(value):
        raise GatewayError.bad_request(f"header {name}: {value!r} is not a valid name", name)
    return value


def _usd(headers: Mapping[str, str], name: str) -> Decimal | None:
    value = headers.get(name)
    if value is None or value == "":
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise GatewayError.bad_request(f"header {name}: {value!r} is not an amount", name) from None
    if not amount.is_finite() or amount < 0:
        raise GatewayError.bad_request(f"header {name}: {value!r} must be >= 0", name)
    return amount
