"""Folding a replay as its events arrive: one pass over the read, no list kept.

:class:`ReplayFold` takes each stored message as the read delivers it (stream order) and
folds it at once into a fresh :class:`~shoal.aggregates.session.Session` of its IID, with
the ingestion's own translation (:func:`~shoal.aggregates.fold.apply_event`), and writes its
timeline line. When the read is over, :meth:`ReplayFold.replay` only arranges the sessions
into the tree under the requested IID.

A replay never records, so the aggregate events ``eventsourcing`` would build (an object of
every field, then a copy into a dict, then a filter of it to call the ``@event`` method) are
skipped: :func:`_fold_lightly` calls the ``@event`` method's body with the same arguments
and moves ``version`` and ``modified_on`` exactly as
:meth:`~eventsourcing.domain.CanMutateAggregate.mutate` would. The state is the same to the
attribute (a test compares it with the library's path on the same log). The session's
``Opened`` event still goes the library's way: once per session.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from types import MethodType
from typing import Any

from eventsourcing.domain import decorated_funcs

from shoal.aggregates.fold import actor, apply_event, open_session
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.replaytree import Replay, ReplayNode, TimelineEntry
from shoal.aggregates.session import Session
from shoal.bus import Stored
from shoal.errors import NotFound
from shoal.schemas import CloudEvent, ModelCalled, PolicyDecided, TaskFailed, ToolCalled

__all__ = ["OutOfOrder", "ReplayFold"]


class OutOfOrder(Exception):
    """An event of an IID arrived after a later one of the same IID (the reads overlap oddly:
    an event filed under another session's subject). The caller refolds from a sorted list."""


class ReplayFold:
    """Sessions folded event by event, in the order the stream delivers them."""

    def __init__(self, prices: PriceTable, at: int | datetime | None = None) -> None:
        self.prices = prices
        self.at = at
        self.nodes: dict[str, ReplayNode] = {}
        self.seqs: list[int] = []
        """Every well-formed event's sequence read, in order, the cut aside."""
        self.malformed = 0
        self.events = 0
        self._seen: set[int] = set()
        self._parents: dict[str, tuple[int, str]] = {}
        self._last: dict[str, int] = {}

    def add(self, item: Stored) -> None:
        """Fold one stored message (a sequence already folded is skipped)."""
        seq = item.seq
        if seq in self._seen:
            return
        self._seen.add(seq)
        ev = item.event
        if ev is None:
            self.malformed += 1
            return
        self.seqs.append(seq)
        at = self.at
        if at is not None and (seq > at if isinstance(at, int) else ev.time > at):
            return
        iid = ev.iid
        node = self.nodes.get(iid)
        if node is None:
            node = self.nodes[iid] = ReplayNode(iid, _fresh_session(ev, seq))
        elif seq < self._last[iid]:
            raise OutOfOrder(f"{iid}: #{seq} after #{self._last[iid]}")
        self._last[iid] = seq
        self.events += 1
        if ev.parentiid and iid != ev.parentiid and iid not in self._parents:
            self._parents[iid] = (seq, ev.parentiid)
        cost = apply_event(node.session, ev, seq, self.prices)
        node.entries.append(_entry(seq, ev, cost))

    def replay(self, iid: str) -> Replay:
        """The tree under ``iid``; :class:`NotFound` if it has no event up to the cut."""
        if iid not in self.nodes:
            raise NotFound(f"session {iid!r} has no events up to {self.at}")
        for each in self.nodes.values():
            _finish(each.session)
        children: dict[str, list[str]] = {}
        # A parent's children in the order their parent was first named (stream order).
        for child, (_, parent) in sorted(self._parents.items(), key=lambda p: p[1][0]):
            children.setdefault(parent, []).append(child)

        def node(of: str, seen: frozenset[str]) -> ReplayNode:
            n = self.nodes[of]
            n.children = []
            for child in children.get(of, []):
                if child in self.nodes and child not in seen:
                    n.children.append(node(child, seen | {child}))
            return n

        return Replay(node(iid, frozenset({iid})), self.events, self.malformed, self.at)


def _fresh_session(ev: CloudEvent, seq: int) -> Session:
    session = open_session(ev, seq)
    # An instance attribute: ``@event`` methods call ``self.trigger_event`` and find it.
    vars(session)["trigger_event"] = MethodType(_fold_lightly, session)
    return session


def _finish(session: Session) -> None:
    vars(session).pop("trigger_event", None)
    # Replay never records: the fresh aggregate's pending events are simply dropped.
    session.collect_events()


def _fold_lightly(self: Session, event_class: type[Any], **kwargs: Any) -> None:
    """``trigger_event`` without the event: the ``@event`` method's body, then the version."""
    timestamp = kwargs.get("timestamp")
    plan = _PLANS.get(event_class) or _plan(event_class)
    if plan is None or timestamp is None:
        Session.trigger_event(self, event_class, **kwargs)
        return
    body, names = plan
    body(self, **{k: kwargs[k] for k in names if k in kwargs})
    self.version += 1
    self.modified_on = timestamp


_Plan = tuple[Callable[..., None], tuple[str, ...]]
_PLANS: dict[type[Any], _Plan | None] = {}


def _plan(event_class: type[Any]) -> _Plan | None:
    """The ``@event`` method an event class applies, and the names it takes."""
    body = decorated_funcs.get(event_class)
    plan = None
    if body is not None:
        plan = body, tuple(n for n in inspect.signature(body).parameters if n != "self")
    _PLANS[event_class] = plan
    return plan


def _entry(seq: int, ev: CloudEvent, cost: Decimal | None) -> TimelineEntry:
    d = ev.data
    decision: str | None = None
    detail = ""
    if isinstance(d, ModelCalled):
        detail = f"{d.model} in={d.input_tokens} out={d.output_tokens}"
        if d.reported_cost_usd is not None and d.reported_cost_usd != cost:
            detail += f" (agent claimed ${d.reported_cost_usd})"
    elif isinstance(d, ToolCalled):
        decision = d.result_class if d.result_class != "ok" else None
        detail = f"{d.tool} {d.arguments}"
    elif isinstance(d, PolicyDecided):
        decision, detail = d.decision, f"{d.action} {d.target} (rule {d.rule}) {d.reason}".strip()
    elif isinstance(d, TaskFailed):
        detail = f"attempt {d.attempt}: {d.error}" + ("" if d.final else " (will retry)")
    elif hasattr(d, "attempt"):
        detail = f"attempt {d.attempt}"
    return TimelineEntry(seq, ev.time, ev.iid, actor(ev), ev.short_type, cost, decision, detail)
