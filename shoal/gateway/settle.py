"""After a model call: price it from the upstream's usage, settle its reservation, record it.

The gateway prices a call with the core's table (so its figure, the ledger's and the core's
are one), puts the figures on the call's ``chat`` span, and, once the answer has been sent,
settles the reservation to the real cost and records ``model.called`` — both in one step,
off the request's path (:meth:`CallSettler.settle`).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

from shoal.aggregates.pricing import PriceTable
from shoal.bus.genai import ChatCall
from shoal.gateway.caller import Caller
from shoal.gateway.config import Target
from shoal.gateway.errors import GatewayError
from shoal.gateway.ledger import Hold, Ledger
from shoal.gateway.record import Recorder
from shoal.schemas import ModelCalled

__all__ = ["CallSettler", "usage_tokens"]


class CallSettler:
    """Prices, settles and records the calls of one gateway replica."""

    def __init__(self, prices: PriceTable, ledger: Ledger, recorder: Recorder) -> None:
        self.prices = prices
        self.ledger = ledger
        self.recorder = recorder

    def priced(self, span: ChatCall, target: Target, usage: dict[str, Any], finish: str) -> Decimal:
        """The call's cost from ``usage``, also set on its span."""
        tokens_in, tokens_out, cached = usage_tokens(usage)
        cost = self.prices.cost(target.model, tokens_in, tokens_out, cached)
        span.response(
            model=target.model,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            finish_reason=finish,
            cost_usd=cost,
        )
        return cost

    async def settle(
        self,
        caller: Caller,
        holds: list[Hold],
        call_id: str,
        usage: dict[str, Any] | None,
        target: Target,
        started: float,
        finish: str = "stop",
        error: GatewayError | None = None,
    ) -> None:
        """Settle the holds to the real cost (nothing without usage) and record the call."""
        tokens_in, tokens_out, cached = usage_tokens(usage or {})
        cost = self.prices.cost(target.model, tokens_in, tokens_out, cached) if usage else None
        data = ModelCalled(
            call_id=call_id,
            model=target.model,
            provider=target.provider,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cached_tokens=cached,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            finish_reason="error" if error is not None and usage is None else finish,
            reported_cost_usd=cost,
            error=str(error)[:500] if error is not None else None,
        )
        await asyncio.gather(
            self.ledger.settle(call_id, holds, cost, lazy=True), self.recorder.emit(data, caller)
        )


def usage_tokens(usage: dict[str, Any]) -> tuple[int, int, int]:
    """Prompt, completion and cached tokens of an OpenAI ``usage`` object."""
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )
