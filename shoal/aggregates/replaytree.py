"""What a replay returns: the tree of re-folded sessions and their timeline lines.

Plain data, built by :class:`~shoal.aggregates.replayfold.ReplayFold` and read by the CLI
and the console.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from shoal.aggregates.session import Session

__all__ = ["Replay", "ReplayNode", "TimelineEntry"]


class TimelineEntry(NamedTuple):
    """One event of the timeline, as a line: when, who, what, cost, decision.

    A named tuple: a replay makes one per event, and a tuple is built in a fraction of a
    frozen dataclass's time."""

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
