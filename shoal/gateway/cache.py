"""The exact-match response cache, in a KV bucket shared by every replica.

The key is the caller's fleet and the SHA-256 of the normalized request: the JSON of every
field that shapes the answer (model as asked, messages, sampling, tools, format), keys
sorted, without transport-only fields (``stream``, ``stream_options``, ``user``). Only
complete, non-streamed, successful answers are stored, with the price they cost; a hit
answers with them and records ``model.called`` with provider ``cache`` and no tokens (so the
core charges nothing) and the saved price as ``reported_cost_usd``. ``X-Shoal-Cache:
bypass`` neither reads nor writes. Entries expire after the configured TTL (and the bucket's
own TTL, ``SHOAL_GATEWAY_CACHE_TTL_S``, bounds it from above).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CachedAnswer", "CachedResponse", "ResponseCache", "cache_key"]


class CachedResponse(BaseModel):
    """The bucket document of one cached answer (what :meth:`ResponseCache.put` writes)."""

    model_config = ConfigDict(extra="forbid")
    body: dict[str, Any]
    cost: str = Field(pattern=r"^-?\d+(\.\d+)?$", description="USD, a decimal string")
    model: str
    provider: str
    expires: float = Field(description="Unix time after which the entry is a miss")


_TRANSPORT_FIELDS = frozenset({"stream", "stream_options", "user"})


def cache_key(fleet: str, body: dict[str, Any]) -> str:
    """``<fleet>.<sha256 of the normalized request>``."""
    shaped = {k: v for k, v in body.items() if k not in _TRANSPORT_FIELDS}
    text = json.dumps(shaped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{fleet}.{hashlib.sha256(text.encode()).hexdigest()}"


@dataclass(frozen=True)
class CachedAnswer:
    """A stored answer: the upstream's JSON body, what it cost, which model gave it."""

    body: dict[str, Any]
    cost_usd: Decimal
    model: str
    provider: str


class ResponseCache:
    """Get and put answers by :func:`cache_key`."""

    def __init__(self, kv: KeyValue, ttl_s: float) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        try:
            doc = json.loads(entry.value or b"{}")
            if float(doc["expires"]) < time.time():
                return None
            return CachedAnswer(doc["body"], Decimal(doc["cost"]), doc["model"], doc["provider"])
        except (ValueError, KeyError, TypeError):
            return None  # an unreadable entry is a miss; the next answer overwrites it

    async def put(self, key: str, answer: CachedAnswer) -> None:
        doc = {
            "body": answer.body,
            "cost": str(answer.cost_usd),
            "model": answer.model,
            "provider": answer.provider,
            "expires": round(time.time() + self.ttl_s, 3),
        }
        await self.kv.put(key, json.dumps(doc, separators=(",", ":")).encode())
