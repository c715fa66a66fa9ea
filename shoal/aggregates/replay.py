"""Forensic replay: a session's raw events from the event log, re-folded into fresh aggregates.

Nothing here reads the core's store: the events come straight from JetStream by subject
filter (the session's, or its goal's when it has one, so delegated child sessions come
along), so replay works with the core down. Each session is re-folded into a fresh
:class:`~shoal.aggregates.session.Session` with the same translation the ingestion uses
(:mod:`shoal.aggregates.fold`), up to a stream sequence or a time, which gives the state
"as of" that point. Costs are the core's price table's, never the agent's claim.

:func:`fold_replay` reads and folds in one pass: each message is decoded and folded
(:class:`~shoal.aggregates.replayfold.ReplayFold`) as the ordered consumer delivers it, so
no list of the session's events is kept and nothing runs after the read but arranging the
tree. :func:`build_replay` folds a list already read (the console's live lines).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from operator import attrgetter

from nats.aio.msg import Msg

from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.replayfold import OutOfOrder, ReplayFold
from shoal.aggregates.replaytree import Replay, ReplayNode, TimelineEntry
from shoal.bus import Bus, Stored, to_stored
from shoal.errors import InvalidEvent, NotFound
from shoal.gcpolicy import fewer_collections
from shoal.schemas.decode import decode_event

__all__ = [
    "Replay",
    "ReplayFold",
    "ReplayNode",
    "TimelineEntry",
    "build_replay",
    "fold_replay",
    "parse_at",
    "read_ordered",
    "read_replay",
    "stream_ordered",
]


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


async def stream_ordered(
    bus: Bus, filter_subject: str, on_message: Callable[[Stored], None], timeout: float = 30.0
) -> int:
    """Hand every stored message under ``filter_subject`` to ``on_message`` as it arrives.

    An ordered push consumer: JetStream streams them with flow control, several times
    faster than pull batches (replay is read-only: nothing to ack). Each message is decoded
    and handed over between network reads, in stream order. Done when a message reports
    nothing pending; returns how many were read.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    received = 0
    failed: list[BaseException] = []

    async def collect(msg: Msg) -> None:
        nonlocal received
        received += 1
        if failed:
            return
        try:
            on_message(to_stored(msg, decode_event))
        except Exception as e:  # raised by the reader, not lost in nats-py's callback task
            failed.append(e)
            if not done.done():
                done.set_result(None)
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(None)

    sub = await bus.js.subscribe(
        filter_subject, stream=bus.topology.events.name, ordered_consumer=True, cb=collect
    )
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
            return 0
        while True:  # ``timeout`` bounds a silence, not a long read that is progressing
            seen = received
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout)
                break
            except TimeoutError:
                if received == seen:
                    raise
    finally:
        await sub.unsubscribe()
    if failed:
        raise failed[0]
    return received


async def read_ordered(bus: Bus, filter_subject: str, timeout: float = 30.0) -> list[Stored]:
    """Every stored message under ``filter_subject``, in stream order (see
    :func:`stream_ordered`)."""
    received: list[Stored] = []
    # Every message read is kept (decoded) until the end: at the default GC threshold the
    # collector would rescan the growing list every few dozen messages.
    with fewer_collections():
        await stream_ordered(bus, filter_subject, received.append, timeout)
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


async def fold_replay(
    bus: Bus, iid: str, prices: PriceTable, at: int | datetime | None = None
) -> ReplayFold:
    """Read and fold in one pass: each event folded as it arrives, nothing kept but the state.

    The session's own events first, then (when it has a goal) the goal's, whose child
    sessions come along; an event both reads deliver is folded once. :class:`NotFound` when
    the session has no event at all; ``.replay(iid)`` then gives the tree.
    """
    fold = ReplayFold(prices, at)
    gids: list[str] = []

    def own(item: Stored) -> None:
        if not gids and item.event is not None and item.event.gid:
            gids.append(item.event.gid)
        fold.add(item)

    with fewer_collections():  # the fold allocates a dozen short-lived objects an event
        try:
            if not await stream_ordered(bus, bus.subjects.session_events(iid), own):
                raise NotFound(f"no events for session {iid!r} on {bus.topology.events.name}")
            if gids:
                await stream_ordered(bus, bus.subjects.goal_events(gids[0]), fold.add)
        except OutOfOrder:
            # The two reads interleave one IID's events: fold them from the sorted merge.
            return _folded(await read_replay(bus, iid), prices, at)
    return fold


def build_replay(
    stored: list[Stored], iid: str, prices: PriceTable, at: int | datetime | None = None
) -> Replay:
    """Re-fold ``stored`` (in stream order) into fresh sessions; the tree under ``iid``."""
    return _folded(stored, prices, at).replay(iid)


def _folded(stored: list[Stored], prices: PriceTable, at: int | datetime | None) -> ReplayFold:
    fold = ReplayFold(prices, at)
    with fewer_collections():
        for item in sorted(stored, key=attrgetter("seq")):
            fold.add(item)
    return fold
