"""Looping sessions, noticed while folding: the same tool call again and again, or model
calls without progress.

A session is flagged ``looping`` once (``session.flagged`` is then published by the
ingestion): when one tool signature has been called ``loop_repeats`` times, or after
``loop_model_calls`` model calls with no new tool call, task event or delegation in between.
Stuck sessions (silent ones) are the watchdog's business (:mod:`shoal.aggregates.watchdog`).
"""

from __future__ import annotations

from shoal.aggregates.batch import CoreLimits, Flag
from shoal.aggregates.session import Session
from shoal.schemas import CloudEvent, ToolCalled

__all__ = ["after_model_call", "after_tool_call"]


def after_model_call(s: Session, ev: CloudEvent, seq: int, limits: CoreLimits) -> Flag | None:
    """A flag when the session made too many model calls without progress."""
    if s.calls_since_progress >= limits.loop_model_calls:
        return _flag(s, ev, seq, f"{s.calls_since_progress} model calls without progress")
    return None


def after_tool_call(s: Session, ev: CloudEvent, seq: int, limits: CoreLimits) -> Flag | None:
    """A flag when the tool call just folded repeats one signature too often."""
    d = ev.data
    assert isinstance(d, ToolCalled)
    last = s.pending_events[-1] if s.pending_events else None
    signature = getattr(last, "signature", None)
    repeats = s.tool_signatures.get(signature, 0) if signature else 0
    if repeats >= limits.loop_repeats:
        return _flag(s, ev, seq, f"tool {d.tool} called {repeats}x with the same arguments")
    return None


def _flag(s: Session, ev: CloudEvent, seq: int, reason: str) -> Flag | None:
    if "looping" in s.flags:
        return None
    s.flagged(seq, "looping", reason, timestamp=ev.time)
    return Flag(s.iid, s.gid, "looping", reason, seq)
