"""Forensic replay: a session's raw events from the event log, re-folded into fresh aggregates.

Nothing here reads the core's store: the events come straight from JetStream by subject
filter (the session's, or its goal's when it has one, so delegated child sessions come
along), so replay works with the core down. Each session is re-folded into a fresh
:class:`~shoal.aggregates.session.Session` with the same translation the ingestion uses
(:mod:`shoal.aggregates.fold`), up to a stream sequence or a time, which gives the state
"as of" that point. Costs are the core's price table's, never the agent's claim.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from nats.aio.msg import Msg

from shoal.aggregates.fold import actor, apply_event, open_session
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.session import Session
from shoal.bus import Bus, Stored, to_stored
from shoal.errors import InvalidEvent, NotFound
from shoal.gcpolicy import fewer_collections
from shoal.schemas import CloudEvent, ModelCalled, PolicyDecided, TaskFailed, ToolCalled
from shoal.schemas.decode import decode_event

__all__ = [
    "Replay",
    "ReplayNode",
    "TimelineEntry",
    "build_replay",
    "parse_at",
    "read_ordered",
    "read_replay",
]


@dataclass(frozen=True)
class TimelineEntry:
    """One event of the timeline, as a line: when, who, what, cost, decision."""

    seq: int
    time: datetime
    iid: str
    actor: str
    type: str
    cost_usd: Decimal | None
    decision: str | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time.isoformat(),
            "iid": self.iid,
            "actor": self.actor,
            "type": self.type,
            "cost_usd": str(self.cost_usd) if self.cost_usd is not None else None,
            "decision": self.decision,
            "detail": self.detail,
        }


@dataclass
class ReplayNode:
    """One session of the tree: its state as of the cut, its lines, its child sessions."""

    iid: str
    session: Session
    entries: list[TimelineEntry] = field(default_factory=list)
    children: list[ReplayNode] = field(default_factory=list)

    @property
    def first_seq(self) -> int:
        return self.entries[0].seq if self.entries else 0

    def items(self) -> list[TimelineEntry | ReplayNode]:
        """Own lines and child sessions interleaved in stream order (a child at its start)."""
        merged: list[TimelineEntry | ReplayNode] = [*self.entries, *self.children]
        return sorted(merged, key=lambda x: x.seq if isinstance(x, TimelineEntry) else x.first_seq)

    def total_cost(self) -> Decimal:
        return self.session.cost_usd + sum((c.total_cost() for c in self.children), Decimal(0))

    def to_json(self) -> dict[str, Any]:
        return {
            "iid": self.iid,
            "state": self.session.summary(),
            "events": [e.to_json() for e in self.entries],
            "children": [c.to_json() for c in self.children],
        }


@dataclass
class Replay:
    """The replayed tree rooted at the requested IID, cut at ``at`` (if given)."""

    root: ReplayNode
    events: int
    malformed: int
    at: int | datetime | None

    def to_json(self) -> dict[str, Any]:
        at = self.at.isoformat() if isinstance(self.at, datetime) else self.at
        return {
            "iid": self.root.iid,
            "at": at,
            "events": self.events,
            "malformed": self.malformed,
            "total_cost_usd": str(self.root.total_cost()),
            "tree": self.root.to_json(),
        }


def parse_at(value: str | None) -> int | datetime | None:
    """``--at``: a stream sequence number or an ISO 8601 time (UTC if no zone given)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidEvent(f"--at {value!r} is neither a sequence number nor an ISO time") from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


async def read_ordered(bus: Bus, filter_subject: str, timeout: float = 30.0) -> list[Stored]:
    """Every stored message under ``filter_subject``, through an ordered push consumer.

    JetStream streams them with flow control, several times faster than pull batches
    (replay is read-only: nothing to ack). Done when a message reports nothing pending.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    received: list[Stored] = []

    async def collect(msg: Msg) -> None:
        # Decoded as it arrives (between network reads), not in a second pass at the end.
        received.append(to_stored(msg, decode_event))
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(None)

    # Every message read is kept (decoded) until the end: at the default GC threshold the
    # collector would rescan the growing list every few dozen messages.
    with fewer_collections():
        sub = await bus.js.subscribe(
            filter_subject, stream=bus.topology.events.name, ordered_consumer=True, cb=collect
        )
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return []
            while True:  # ``timeout`` bounds a silence, not a long read that is progressing
                seen = len(received)
                try:
                    await asyncio.wait_for(asyncio.shield(done), timeout)
                    break
                except TimeoutError:
                    if len(received) == seen:
                        raise
        finally:
            await sub.unsubscribe()
    return received


async def read_replay(bus: Bus, iid: str) -> list[Stored]:
    """The stored events of a session, and of its goal's other sessions when it has a goal."""
    own = await read_ordered(bus, bus.subjects.session_events(iid))
    if not own:
        raise NotFound(f"no events for session {iid!r} on {bus.topology.events.name}")
    gid = next((s.event.gid for s in own if s.event is not None and s.event.gid), None)
    if gid is None:
        return own
    # The goal's events bring the child sessions; the session's own may include events sent
    # without the GID (an operator's session.killed, a late outcome.reported).
    merged = {s.seq: s for s in await read_ordered(bus, bus.subjects.goal_events(gid))}
    merged.update((s.seq, s) for s in own)
    return [merged[seq] for seq in sorted(merged)]


def build_replay(
    stored: list[Stored], iid: str, prices: PriceTable, at: int | datetime | None = None
) -> Replay:
    """Re-fold ``stored`` into fresh sessions and arrange the tree under ``iid``."""
    with fewer_collections():  # the fold allocates a dozen short-lived objects an event
        return _build(stored, iid, prices, at)


def _build(stored: list[Stored], iid: str, prices: PriceTable, at: int | datetime | None) -> Replay:
    events: dict[str, list[tuple[int, CloudEvent]]] = defaultdict(list)
    parents: dict[str, str] = {}
    malformed = 0
    for item in stored:
        if item.event is None:
            malformed += 1
            continue
        ev = item.event
        if isinstance(at, int) and item.seq > at:
            continue
        if isinstance(at, datetime) and ev.time > at:
            continue
        events[ev.iid].append((item.seq, ev))
        if ev.parentiid and ev.iid != ev.parentiid:
            parents.setdefault(ev.iid, ev.parentiid)
    if iid not in events:
        raise NotFound(f"session {iid!r} has no events up to {at}")
    children: dict[str, list[str]] = defaultdict(list)
    for child, parent in parents.items():
        children[parent].append(child)

    def node(of: str, seen: frozenset[str]) -> ReplayNode:
        n = _fold(of, events[of], prices)
        for child in children.get(of, []):
            if child in events and child not in seen:
                n.children.append(node(child, seen | {child}))
        return n

    total = sum(len(v) for v in events.values())
    return Replay(node(iid, frozenset({iid})), total, malformed, at)


def _fold(iid: str, items: list[tuple[int, CloudEvent]], prices: PriceTable) -> ReplayNode:
    first_seq, first = items[0]
    session = open_session(first, first_seq)
    node = ReplayNode(iid, session)
    for seq, ev in items:
        cost = apply_event(session, ev, seq, prices)
        node.entries.append(_entry(seq, ev, cost))
    # Replay never records: the fresh aggregate's pending events are simply dropped.
    session.collect_events()
    return node


def _entry(seq: int, ev: CloudEvent, cost: Decimal | None) -> TimelineEntry:
    d = ev.data
    decision: str | None = None
    detail = ""
    if isinstance(d, PolicyDecided):
        decision, detail = d.decision, f"{d.action} {d.target} (rule {d.rule}) {d.reason}".strip()
    elif isinstance(d, ToolCalled):
        decision = d.result_class if d.result_class != "ok" else None
        detail = f"{d.tool} {d.arguments}"
    elif isinstance(d, ModelCalled):
        detail = f"{d.model} in={d.input_tokens} out={d.output_tokens}"
        if d.reported_cost_usd is not None and d.reported_cost_usd != cost:
            detail += f" (agent claimed ${d.reported_cost_usd})"
    elif isinstance(d, TaskFailed):
        detail = f"attempt {d.attempt}: {d.error}" + ("" if d.final else " (will retry)")
    elif hasattr(d, "attempt"):
        detail = f"attempt {d.attempt}"
    return TimelineEntry(seq, ev.time, ev.iid, actor(ev), ev.short_type, cost, decision, detail)
