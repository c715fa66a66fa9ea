"""Budget reservations and rate windows shared by every gateway replica, in a KV bucket.

One document per scope (``key.<id>``, ``session.<iid>``, ``goal.<gid>``, ``fleet.<name>``,
``principal.<name>``): the spend settled so far, the holds of calls in flight (each with an
expiry, so a replica that died mid-call frees its holds by itself), and the current
one-minute rate window. Every change is a compare-and-set on the key's revision, so two
replicas reserving at once never both get the last dollar: the loser re-reads and decides
again. A replica keeps the last revision it wrote; with one writer per scope the first try
succeeds (one round trip), with many the retry costs one more read.

A refused reservation is re-checked against a fresh read before it is reported, so a stale
copy never refuses a call the budget allows. Within a replica, changes to one scope are
group-committed (see :class:`Ledger`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BudgetDocument", "Hold", "Ledger", "LedgerRefusal"]

_USD = r"^-?\d+(\.\d+)?$"


class BudgetDocument(BaseModel):
    """The bucket document of one scope's ledger (what ``_Doc.dump`` writes)."""

    model_config = ConfigDict(extra="forbid")
    spent: str = Field(pattern=_USD, description="USD recorded as spent, a decimal string")
    held: dict[str, tuple[str, float]] = Field(
        description="call id -> [USD held (decimal string), expiry (Unix time)]"
    )
    window: int = Field(default=0, description="the current rate window (its number; 0: none)")
    calls: int = Field(default=0, ge=0, description="calls in the rate window")
    limit: str | None = Field(default=None, pattern=_USD, description="the budget, USD")


log = logging.getLogger(__name__)

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


_Op = Callable[["_Doc", float], "LedgerRefusal | None"]


@dataclass
class _Pending:
    op: _Op
    done: asyncio.Future[LedgerRefusal | None]


class Ledger:
    """Reserve before a call, settle after it, across replicas (compare-and-set).

    Within a replica the changes to one scope are group-committed: one writer per scope
    applies every change queued meanwhile to the document and writes it with one
    compare-and-set, so 32 concurrent calls on one key cost a few KV writes, not a storm of
    conflicting ones. Across replicas a conflict re-reads and re-applies the batch.
    """

    def __init__(
        self, kv: KeyValue, hold_ttl_s: float = 600.0, settle_delay_s: float = 0.025
    ) -> None:
        self.kv = kv
        self.hold_ttl_s = hold_ttl_s
        self.settle_delay_s = settle_delay_s
        self._known: dict[str, tuple[_Doc, int]] = {}
        self._queues: dict[str, list[_Pending]] = {}
        self._writing: set[str] = set()
        self._lazy: set[asyncio.Future[LedgerRefusal | None]] = set()
        self._writers: set[asyncio.Task[None]] = set()
        self.writes = 0  # KV writes made (bench, tests)

    async def reserve(
        self, call_id: str, holds: list[Hold], amount: Decimal
    ) -> LedgerRefusal | None:
        """Hold ``amount`` on every scope, or none of them; None when granted."""
        if not holds:
            return None
        results = await asyncio.gather(
            *(self._apply(h.key, self._reserve_op(h, call_id, amount)) for h in holds)
        )
        refused = next((r for r in results if r is not None), None)
        if refused is not None:
            granted = [h for h, r in zip(holds, results, strict=True) if r is None]
            await self.settle(call_id, granted, None)
        return refused

    async def settle(
        self, call_id: str, holds: list[Hold], cost: Decimal | None, *, lazy: bool = False
    ) -> None:
        """Drop the call's holds and add its real ``cost`` (None: released, nothing spent).

        ``lazy`` queues the change for up to ``settle_delay_s``, so it rides in the next
        reservation's write on the same scope (one KV write per call instead of two). Until
        it is written the call's hold, never less than its cost, stays counted; a replica
        that dies meanwhile loses the settlement and the hold expires after ``hold_ttl_s``.
        """

        def op(doc: _Doc, now: float) -> None:
            doc.held.pop(call_id, None)
            if cost:
                doc.spent += cost

        if not lazy:
            if holds:
                await asyncio.gather(*(self._apply(h.key, op) for h in holds))
            return
        loop = asyncio.get_running_loop()
        for h in holds:
            done = self._enqueue(h.key, op)
            self._lazy.add(done)
            done.add_done_callback(self._lazy_done)
            loop.call_later(self.settle_delay_s, self._start, h.key)

    async def flush(self) -> None:
        """Write every queued settlement now (shutdown, tests)."""
        while self._lazy or self._writers:
            for key in list(self._queues):
                self._start(key)
            await asyncio.gather(*self._lazy, *self._writers, return_exceptions=True)

    async def spent(self, key: str) -> tuple[Decimal, Decimal]:
        """(settled, held) on one scope, read fresh (for tests and ``keys ls``)."""
        doc, _ = await self._read(key)
        return doc.spent, doc.held_usd(time.time())

    def _reserve_op(self, hold: Hold, call_id: str, amount: Decimal) -> _Op:
        def op(doc: _Doc, now: float) -> LedgerRefusal | None:
            refusal = self._check(doc, hold, amount, now)
            if refusal is None:
                doc.held[call_id] = [str(amount), round(now + self.hold_ttl_s, 1)]
                if hold.rpm is not None:
                    doc.calls += 1
            return refusal

        return op

    def _enqueue(self, key: str, op: _Op) -> asyncio.Future[LedgerRefusal | None]:
        done: asyncio.Future[LedgerRefusal | None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append(_Pending(op, done))
        return done

    async def _apply(self, key: str, op: _Op) -> LedgerRefusal | None:
        done = self._enqueue(key, op)
        self._start(key)
        return await done

    def _start(self, key: str) -> None:
        """Start the scope's writer unless it runs (it takes everything queued meanwhile)."""
        if key in self._writing or not self._queues.get(key):
            return
        self._writing.add(key)
        task = asyncio.get_running_loop().create_task(self._write_queued(key))
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    async def _write_queued(self, key: str) -> None:
        try:
            while queue := self._queues.get(key):
                batch = queue[:]
                del queue[:]
                try:
                    await self._commit(key, batch)
                except Exception as e:
                    for p in batch:
                        if not p.done.done():
                            p.done.set_exception(e)
        finally:
            self._writing.discard(key)
            if not self._queues.get(key):
                self._queues.pop(key, None)

    def _lazy_done(self, done: asyncio.Future[LedgerRefusal | None]) -> None:
        self._lazy.discard(done)
        if not done.cancelled() and done.exception() is not None:
            log.error("a settlement could not be written: %s", done.exception())

    async def _commit(self, key: str, batch: list[_Pending]) -> None:
        cached = self._known.get(key)
        fresh = cached is None
        base, rev = cached if cached is not None else await self._read(key)
        for _ in range(_ATTEMPTS):
            now = time.time()
            doc = base.copy()
            before = doc.dump()
            results = [p.op(doc, now) for p in batch]
            if not fresh and any(r is not None for r in results):
                base, rev = await self._read(key)  # refuse on the stored state, not a copy
                fresh = True
                continue
            if doc.dump() == before or await self._write(key, doc, rev):
                for p, r in zip(batch, results, strict=True):
                    p.done.set_result(r)
                return
            base, rev = await self._read(key)
            fresh = True
        raise RuntimeError(f"{key}: too contended to change (after {_ATTEMPTS} attempts)")

    async def _read(self, key: str) -> tuple[_Doc, int]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return _Doc(_ZERO, {}, 0, 0, None), 0
        return _Doc.parse(entry.value), entry.revision or 0

    def _check(self, doc: _Doc, hold: Hold, amount: Decimal, now: float) -> LedgerRefusal | None:
        if hold.rpm is not None:
            window = int(now // 60)
            if doc.window != window:
                doc.window, doc.calls = window, 0
            if doc.calls >= hold.rpm:
                why = f"{hold.key} made {doc.calls} calls this minute (limit {hold.rpm})"
                return LedgerRefusal(hold.key, "rate", why)
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

    async def _write(self, key: str, doc: _Doc, rev: int) -> bool:
        try:
            new_rev = await self.kv.update(key, doc.dump(), last=rev)
        except KeyWrongLastSequenceError:
            self._known.pop(key, None)
            return False
        self.writes += 1
        self._known[key] = (doc, new_rev)
        return True
