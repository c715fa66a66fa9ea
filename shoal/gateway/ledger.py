"""Budget reservations and rate windows shared by every gateway replica, in a KV bucket.

One document per scope (``key.<id>``, ``session.<iid>``, ``goal.<gid>``, ``fleet.<name>``,
``principal.<name>``): the spend settled so far, the holds of calls in flight (each with an
expiry, so a replica that died mid-call frees its holds by itself), and the current
one-minute rate window. Every change is a compare-and-set on the key's revision, so two
replicas reserving at once never both get the last dollar: the loser re-reads and decides
again. A replica keeps the last revision it wrote; with one writer per scope the first try
succeeds (one round trip), with many the retry costs one more read.

A refused reservation is re-checked against a fresh read before it is reported, so a stale
copy never refuses a call the budget allows.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

__all__ = ["Hold", "Ledger", "LedgerRefusal"]

_ZERO = Decimal(0)
_ATTEMPTS = 20


@dataclass(frozen=True)
class Hold:
    """One scope a call reserves against: its limit (USD) and/or requests per minute.

    ``tighten_only`` scopes (session, goal: limits the caller states) keep the lowest limit
    any caller gave, so a caller can lower its own ceiling but never raise it.
    """

    key: str
    limit_usd: Decimal | None = None
    rpm: int | None = None
    tighten_only: bool = False


@dataclass(frozen=True)
class LedgerRefusal:
    """Why a reservation was refused."""

    scope: str
    kind: Literal["budget", "rate"]
    reason: str


@dataclass
class _Doc:
    spent: Decimal
    held: dict[str, list[Any]]  # call id -> [amount str, expires at (epoch s)]
    window: int
    calls: int
    limit: Decimal | None

    @classmethod
    def parse(cls, raw: bytes | None) -> _Doc:
        d = json.loads(raw) if raw else {}
        limit = d.get("limit")
        return cls(
            Decimal(d.get("spent", "0")),
            dict(d.get("held", {})),
            int(d.get("window", 0)),
            int(d.get("calls", 0)),
            Decimal(limit) if limit is not None else None,
        )

    def dump(self) -> bytes:
        d: dict[str, Any] = {"spent": str(self.spent), "held": self.held}
        if self.window:
            d["window"], d["calls"] = self.window, self.calls
        if self.limit is not None:
            d["limit"] = str(self.limit)
        return json.dumps(d, separators=(",", ":")).encode()

    def copy(self) -> _Doc:
        return _Doc(self.spent, dict(self.held), self.window, self.calls, self.limit)

    def held_usd(self, now: float) -> Decimal:
        for call_id in [c for c, (_, until) in self.held.items() if until < now]:
            del self.held[call_id]  # a hold whose replica never settled it
        return sum((Decimal(a) for a, _ in self.held.values()), _ZERO)


class Ledger:
    """Reserve before a call, settle after it, across replicas (compare-and-set)."""

    def __init__(self, kv: KeyValue, hold_ttl_s: float = 600.0) -> None:
        self.kv = kv
        self.hold_ttl_s = hold_ttl_s
        self._known: dict[str, tuple[_Doc, int]] = {}

    async def reserve(
        self, call_id: str, holds: list[Hold], amount: Decimal
    ) -> LedgerRefusal | None:
        """Hold ``amount`` on every scope, or none of them; None when granted."""
        if not holds:
            return None
        results = await asyncio.gather(*(self._reserve(h, call_id, amount) for h in holds))
        refused = next((r for r in results if r is not None), None)
        if refused is not None:
            granted = [h for h, r in zip(holds, results, strict=True) if r is None]
            await self.settle(call_id, granted, None)
        return refused

    async def settle(self, call_id: str, holds: list[Hold], cost: Decimal | None) -> None:
        """Drop the call's holds and add its real ``cost`` (None: released, nothing spent)."""
        if holds:
            await asyncio.gather(*(self._settle(h.key, call_id, cost) for h in holds))

    async def spent(self, key: str) -> tuple[Decimal, Decimal]:
        """(settled, held) on one scope, read fresh (for tests and ``keys ls``)."""
        doc, _ = await self._read(key)
        return doc.spent, doc.held_usd(time.time())

    async def _read(self, key: str) -> tuple[_Doc, int]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return _Doc(_ZERO, {}, 0, 0, None), 0
        return _Doc.parse(entry.value), entry.revision or 0

    def _cached(self, key: str) -> tuple[_Doc, int] | None:
        # A copy: concurrent calls on one scope in this replica must not see each other's
        # unwritten holds.
        cached = self._known.get(key)
        return (cached[0].copy(), cached[1]) if cached is not None else None

    async def _reserve(self, hold: Hold, call_id: str, amount: Decimal) -> LedgerRefusal | None:
        cached = self._cached(hold.key)
        fresh = cached is None
        doc, rev = cached if cached is not None else await self._read(hold.key)
        for _ in range(_ATTEMPTS):
            now = time.time()
            refusal = self._check(doc, hold, amount, now)
            if refusal is not None and not fresh:
                doc, rev = await self._read(hold.key)  # decide on the stored state, not a copy
                fresh = True
                continue
            if refusal is not None:
                self._known[hold.key] = (doc, rev)
                return refusal
            doc.held[call_id] = [str(amount), round(now + self.hold_ttl_s, 1)]
            if hold.rpm is not None:
                doc.calls += 1
            if await self._write(hold.key, doc, rev):
                return None
            doc, rev = await self._read(hold.key)
            fresh = True
        return LedgerRefusal(hold.key, "budget", f"{hold.key} is too contended to reserve on")

    def _check(self, doc: _Doc, hold: Hold, amount: Decimal, now: float) -> LedgerRefusal | None:
        if hold.rpm is not None:
            window = int(now // 60)
            if doc.window != window:
                doc.window, doc.calls = window, 0
            if doc.calls >= hold.rpm:
                return LedgerRefusal(
                    hold.key,
                    "rate",
                    f"{hold.key} made {doc.calls} calls this minute (limit {hold.rpm})",
                )
        limit = hold.limit_usd
        if hold.tighten_only and limit is not None:
            limit = doc.limit = limit if doc.limit is None else min(doc.limit, limit)
        if limit is None:
            return None
        held = doc.held_usd(now)
        if doc.spent + held + amount > limit:
            return LedgerRefusal(
                hold.key,
                "budget",
                f"{hold.key} has spent ${doc.spent} and holds ${held} of ${limit}; "
                f"this call may cost up to ${amount}",
            )
        return None

    async def _settle(self, key: str, call_id: str, cost: Decimal | None) -> None:
        cached = self._cached(key)
        doc, rev = cached if cached is not None else await self._read(key)
        for _ in range(_ATTEMPTS):
            doc.held.pop(call_id, None)
            if cost:
                doc.spent += cost
            if await self._write(key, doc, rev):
                return
            doc, rev = await self._read(key)
        raise RuntimeError(f"could not settle call {call_id} on {key}: too contended")

    async def _write(self, key: str, doc: _Doc, rev: int) -> bool:
        try:
            new_rev = await self.kv.update(key, doc.dump(), last=rev)
        except KeyWrongLastSequenceError:
            self._known.pop(key, None)
            return False
        self._known[key] = (doc, new_rev)
        return True
