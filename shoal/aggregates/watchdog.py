"""Stuck sessions: running, yet silent for longer than ``stuck_after_s``.

Looping is detected while folding (:mod:`shoal.aggregates.processor`: the same tool with the
same arguments ``loop_repeats`` times, or ``loop_model_calls`` model calls in a row without a
new tool call, task event or delegation). Being stuck is the absence of events, so it can
only be noticed by the clock: ``shoal core`` calls :func:`flag_stuck` periodically. It does
not record anything itself: it *publishes* ``session.flagged`` (source ``shoal://core``),
and the flag is recorded when the ingestion reads it back. The event log thus holds every
flag, and a replay or a re-ingestion sees the same ones.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from shoal.aggregates.application import ShoalCore
from shoal.aggregates.processor import CORE_SOURCE, CoreProcessor
from shoal.aggregates.session import Session
from shoal.bus import Bus
from shoal.schemas import CloudEvent, SessionFlagged

__all__ = ["flag_stuck"]

MAX_PER_ROUND = 200
"""Sessions examined per call: a backlog is worked off over several rounds."""


async def flag_stuck(
    bus: Bus, app: ShoalCore, processor: CoreProcessor, now: datetime, stuck_after_s: float
) -> int:
    """Publish ``session.flagged`` (stuck) for running sessions silent too long; count them."""
    cutoff = now - timedelta(seconds=stuck_after_s)
    flagged = 0
    for iid in processor.silent_since(cutoff)[:MAX_PER_ROUND]:
        session: Session | None = processor.cached_session(iid)
        if session is None:
            session = await asyncio.to_thread(app.session, iid)
        if session.status != "running" or "stuck" in session.flags:
            processor.forget_silent(iid)
            continue
        if session.modified_on >= cutoff:
            continue
        silent = int((now - session.modified_on).total_seconds())
        data = SessionFlagged(flag="stuck", reason=f"running and silent for {silent}s")
        # One id per silence (the session's last event): a re-published flag is dropped by
        # JetStream; a session that resumes and falls silent again gets a new one.
        flag_id = f"core-flag-stuck-{iid}-{session.last_seq}"
        await bus.publish(
            CloudEvent.new(data, iid=iid, gid=session.gid, source=CORE_SOURCE, id=flag_id)
        )
        processor.forget_silent(iid)
        flagged += 1
    return flagged
