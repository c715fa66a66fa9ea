"""Dead letters of every stream: list, show, replay (library side of ``shoal deadletters``).

A consumer that cannot process a message parks it on ``<prefix>.deadletter.<origin>``
(``events``, ``tasks``, ``goals``…) with the reason. Reading a record goes through one
function, :func:`to_deadletter`, so a change of the record's format (a bounded record with
the body in an object store) is adapted there and nowhere else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from shoal.bus import Bus
from shoal.bus.client import ORIGINAL_SUBJECT_HEADER, REASON_HEADER
from shoal.errors import NotFound, Refused

__all__ = ["DeadLetter", "count_by_origin", "get_deadletter", "list_deadletters", "replay"]

REPLAYED_HEADER = "Shoal-Replayed-From"
"""Set on a replayed message: the dead-letter stream sequence it came from."""


@dataclass(frozen=True)
class DeadLetter:
    """One parked message: where it came from, why, its size and hash, its body if stored."""

    seq: int
    origin: str
    subject: str
    reason: str
    size: int
    sha256: str
    time: datetime | None
    body: bytes | None = field(default=None, repr=False)

    def to_json(self, *, with_body: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "origin": self.origin,
            "subject": self.subject,
            "reason": self.reason,
            "size": self.size,
            "sha256": self.sha256,
            "time": self.time.isoformat() if self.time else None,
        }
        if with_body and self.body is not None:
            out["body"] = self.body.decode("utf-8", errors="replace")
        return out


def to_deadletter(
    seq: int, subject: str, headers: dict[str, str] | None, data: bytes, time: datetime | None
) -> DeadLetter:
    """Decode one dead-letter record (today: the raw body, reason in a header)."""
    headers = headers or {}
    return DeadLetter(
        seq=seq,
        origin=subject.rsplit(".", 1)[-1],
        subject=headers.get(ORIGINAL_SUBJECT_HEADER, ""),
        reason=headers.get(REASON_HEADER, ""),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        time=time,
        body=data,
    )


def _from_msg(msg: Msg) -> DeadLetter:
    meta = msg.metadata
    return to_deadletter(meta.sequence.stream, msg.subject, msg.headers, msg.data, meta.timestamp)


async def list_deadletters(
    bus: Bus, origin: str | None = None, limit: int = 100
) -> tuple[list[DeadLetter], int]:
    """The most recent ``limit`` dead letters (of one origin, or all) and how many there are."""
    filter_subject = bus.subjects.deadletter(origin) if origin else bus.subjects.all_deadletters
    stream = bus.topology.deadletter.name
    info = await bus.js.stream_info(stream, subjects_filter=filter_subject)
    total = sum((info.state.subjects or {}).values())
    if total == 0:
        return [], 0
    start = max(1, info.state.last_seq - 10 * limit) if total > limit else None
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if start else api.DeliverPolicy.ALL,
        opt_start_seq=start,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    psub = await bus.js.pull_subscribe(filter_subject, stream=stream, config=config)
    out: list[DeadLetter] = []
    try:
        pending = (await psub.consumer_info()).num_pending
        while pending:
            msgs = await psub.fetch(min(1000, pending), timeout=bus.settings.request_timeout)
            out.extend(_from_msg(m) for m in msgs)
            pending = msgs[-1].metadata.num_pending
    finally:
        await psub.unsubscribe()
    return out[-limit:], total


async def count_by_origin(bus: Bus) -> dict[str, int]:
    """Dead letters per origin (``events``, ``tasks``…), from the stream's subject counts."""
    try:
        info = await bus.js.stream_info(
            bus.topology.deadletter.name, subjects_filter=bus.subjects.all_deadletters
        )
    except NotFoundError:
        return {}
    counts: dict[str, int] = {}
    for subject, n in (info.state.subjects or {}).items():
        origin = subject.rsplit(".", 1)[-1]
        counts[origin] = counts.get(origin, 0) + n
    return dict(sorted(counts.items()))


async def get_deadletter(bus: Bus, seq: int) -> DeadLetter:
    """One dead letter by its sequence in the dead-letter stream."""
    try:
        raw = await bus.js.get_msg(bus.topology.deadletter.name, seq)
    except NotFoundError:
        raise NotFound(f"no dead letter #{seq} on {bus.topology.deadletter.name}") from None
    return to_deadletter(raw.seq or seq, raw.subject or "", raw.headers, raw.data or b"", None)


async def replay(bus: Bus, seq: int, *, keep: bool = False) -> tuple[DeadLetter, int]:
    """Publish a dead letter's body again to its original subject; remove it unless ``keep``.

    Returns the letter and the sequence of the new message in the original's stream.
    """
    letter = await get_deadletter(bus, seq)
    if not letter.subject:
        raise Refused(f"dead letter #{seq} does not say which subject it came from")
    if letter.body is None:
        raise Refused(f"dead letter #{seq} has no stored body to replay")
    ack = await bus.js.publish(
        letter.subject,
        letter.body,
        headers={REPLAYED_HEADER: str(seq)},
        timeout=bus.settings.request_timeout,
    )
    if not keep:
        await bus.js.delete_msg(bus.topology.deadletter.name, seq)
    return letter, int(ack.seq)
