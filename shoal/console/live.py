"""A session's timeline, live: events from ``SHOAL_EVENTS`` as server-sent events.

The page renders the replayed tree up to the last sequence it saw, then opens an
``EventSource`` on ``/sessions/<iid>/stream?after=<seq>``. Here two ordered push consumers
(JetStream's own flow-controlled delivery, nothing to ack) follow the session's subject and,
once its GID is known, the goal's (where delegated child sessions report), both from
``after + 1``; each message becomes one SSE ``event: entry`` with the timeline line as JSON,
priced with the core's table as replay prices it. A comment every ``keepalive_s`` keeps
proxies from closing an idle stream; the consumers go when the browser does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.msg import Msg
from nats.js import api

from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.replay import build_replay
from shoal.bus import Bus, Stored, to_stored
from shoal.console.format import usd_text

__all__ = ["entry_json", "follow_session"]

log = logging.getLogger("shoal.console")


def entry_json(item: Stored, prices: PriceTable) -> dict[str, Any] | None:
    """One stored event as the page's timeline line (None for a malformed message)."""
    ev = item.event
    if ev is None:
        return None
    line = build_replay([item], ev.iid, prices).root.entries[0]
    return {
        "seq": line.seq,
        "time": line.time.isoformat().replace("+00:00", "Z"),
        "iid": line.iid,
        "gid": ev.gid,
        "parentiid": ev.parentiid,
        "actor": line.actor,
        "type": line.type,
        "cost": usd_text(line.cost_usd) if line.cost_usd is not None else None,
        "decision": line.decision,
        "detail": line.detail,
    }


async def follow_session(
    bus: Bus,
    iid: str,
    gid: str | None,
    after: int,
    prices: PriceTable,
    keepalive_s: float = 15.0,
) -> AsyncIterator[str]:
    """SSE frames of every event of the session (and its goal) stored after ``after``."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    subs = []
    seen: set[int] = set()

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    async def follow(filter_subject: str) -> None:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
        )
        subs.append(
            await bus.js.subscribe(
                filter_subject,
                stream=bus.topology.events.name,
                ordered_consumer=True,
                config=config,
                cb=on_msg,
            )
        )

    try:
        await follow(bus.subjects.session_events(iid))
        if gid:
            await follow(bus.subjects.goal_events(gid))
        yield "retry: 1000\n\n"
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), keepalive_s)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            item = to_stored(msg)
            if item.seq in seen:
                continue
            seen.add(item.seq)
            line = entry_json(item, prices)
            if line is None:
                continue
            if gid is None and line["gid"]:
                gid = line["gid"]
                await follow(bus.subjects.goal_events(gid))
            yield f"id: {item.seq}\nevent: entry\ndata: {json.dumps(line)}\n\n"
    finally:
        for sub in subs:
            try:
                await asyncio.wait_for(sub.unsubscribe(), 2.0)
            except Exception as e:  # the connection may be gone; the server drops the consumer
                log.debug("could not unsubscribe a live timeline consumer: %s", e)
