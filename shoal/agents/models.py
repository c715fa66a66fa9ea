"""Model clients: the protocol the model gateway calls, and the deterministic offline client.

The offline client answers by rules (plan, summarise, echo), reports token counts computed
from text lengths the way a BPE tokenizer roughly would (~4 characters a token), and prices
the call from the core's price table (:mod:`shoal.schemas.pricing`), so tests and the demo
see realistic ``model.called`` figures without a network. The OpenAI-compatible HTTP client
lives in :mod:`shoal.agents.http_model`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol

from shoal.schemas.pricing import PriceTable, builtin_prices

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Completion",
    "ModelClient",
    "OfflineModelClient",
    "OfflineRule",
    "count_tokens",
    "price",
]

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ChatMessage:
    """One chat message, as in the OpenAI chat-completions API."""

    role: Role
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """What the gateway asks of a model client."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 512
    temperature: float = 0.0
    json_mode: bool = False


@dataclass(frozen=True)
class Completion:
    """A model's answer with its usage; ``cost_usd`` is the client's own estimate (or None)."""

    text: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    finish_reason: str = "stop"
    cost_usd: Decimal | None = None


class ModelClient(Protocol):
    """Anything that turns a :class:`ChatRequest` into a :class:`Completion`."""

    provider: str

    def serves(self, model: str) -> bool:
        """True when this client can answer for ``model``."""
        ...

    async def complete(self, request: ChatRequest) -> Completion: ...

    async def aclose(self) -> None: ...


def price(
    model: str, input_tokens: int, output_tokens: int, table: PriceTable | None = None
) -> Decimal | None:
    """The agent's own estimate of a call's cost, from the core's price table.

    ``None`` for a model the table does not name (the core prices those with its ``"*"``
    entry; the agent does not guess). ``table`` defaults to the table shipped with shoal.
    """
    prices = table or builtin_prices()
    if not prices.is_listed(model):
        return None
    return prices.cost(model, input_tokens, output_tokens)


def count_tokens(text: str) -> int:
    """Tokens of ``text`` estimated as a BPE tokenizer would: about 4 characters each."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


OfflineRule = Callable[[ChatRequest], str | None]
"""A rule answers a request (returns the text) or passes (returns None)."""

_ITEM = re.compile(r"^\s*-\s+(\S.*)$", re.MULTILINE)
_FIELD = re.compile(r"^(Capability|Input key):\s*(\S+)\s*$", re.MULTILINE)
_SENTENCE = re.compile(r"(.+?[.!?])(\s|$)", re.DOTALL)


def plan_rule(request: ChatRequest) -> str | None:
    """A planner prompt (``Capability:``, ``Input key:`` lines, then the items: a JSON array
    between ``<items>`` and ``</items>``, or ``- item`` lines): one task per item.

    Fields are read only above the items, and the items only as data: a model that
    keeps tool output apart from its instructions, as a well-prompted real one should.
    """
    system = request.messages[0].content if request.messages else ""
    if "planner" not in system.lower():
        return None
    user = request.messages[-1].content
    head, block, rest = user.partition("\n<items>\n")
    fields = dict(reversed(_FIELD.findall(head)))  # the first of each wins
    capability, key = fields.get("Capability"), fields.get("Input key", "item")
    if capability is None:
        return json.dumps({"tasks": []})
    if block:
        try:
            raw = json.loads(rest.partition("\n</items>")[0])
        except ValueError:
            raw = []
        items = [str(i) for i in raw] if isinstance(raw, list) else []
    else:
        items = [m.strip() for m in _ITEM.findall(user)]
    return json.dumps({"tasks": [{"capability": capability, "input": {key: i}} for i in items]})


def summarise_rule(request: ChatRequest) -> str | None:
    """A summarising prompt: the text's title (first line) and first sentence, word count."""
    system = request.messages[0].content if request.messages else ""
    if "summar" not in system.lower():
        return None
    text = request.messages[-1].content.strip()
    lines = [
        ln.strip("# ").strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.lstrip().startswith("<!--")  # skip HTML comments
    ]
    title = lines[0] if lines else "(empty)"
    body = " ".join(lines[1:]) if len(lines) > 1 else title
    match = _SENTENCE.match(body)
    first = (match.group(1) if match else body)[:200]
    return f"{title}: {first} ({len(text.split())} words)"


def echo_rule(request: ChatRequest) -> str:
    """Fallback: acknowledge the last message."""
    last = request.messages[-1].content if request.messages else ""
    return f"ok: {last[:80]}"


@dataclass
class OfflineModelClient:
    """A deterministic model for tests and the demo: rule-based answers, realistic usage.

    ``latency_s`` simulates the wait on a real endpoint (agent work is mostly waiting).
    """

    models: Sequence[str] = ("offline-small", "offline-large")
    rules: Sequence[OfflineRule] = field(default_factory=lambda: (plan_rule, summarise_rule))
    latency_s: float = 0.0
    provider: str = "offline"
    prices: PriceTable | None = None
    """The price table of the estimate it reports (default: the table shipped with shoal)."""

    def serves(self, model: str) -> bool:
        return model in self.models

    async def complete(self, request: ChatRequest) -> Completion:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        text = next((t for t in (r(request) for r in self.rules) if t is not None), None)
        text = echo_rule(request) if text is None else text
        # Chat formats spend a few tokens per message on roles and separators.
        input_tokens = sum(count_tokens(m.content) + 4 for m in request.messages) + 3
        output_tokens = count_tokens(text)
        finish = "stop"
        if output_tokens > request.max_tokens:
            text, output_tokens, finish = (
                text[: request.max_tokens * 4],
                request.max_tokens,
                "length",
            )
        return Completion(
            text=text,
            model=request.model,
            provider=self.provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            finish_reason=finish,
            cost_usd=price(request.model, input_tokens, output_tokens, self.prices),
        )

    async def aclose(self) -> None:
        return None
