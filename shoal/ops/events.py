"""Following the event log (library side of ``shoal events tail``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from nats.js import api

from shoal.bus import Bus, Stored, to_stored
from shoal.schemas import CloudEvent

__all__ = ["event_facts", "event_line", "event_summary", "stored_to_json", "tail"]


async def tail(
    bus: Bus,
    filter_subject: str,
    *,
    from_start: bool,
    follow: bool,
    idle_timeout: float | None = None,
) -> AsyncIterator[Stored]:
    """Yield stored events matching the filter, then (if ``follow``) new ones as they come.

    ``idle_timeout`` stops following after that many seconds of silence, for scripts.
    """
    if from_start:
        stored = await bus.read(filter_subject)
        for item in stored:
            yield item
        start_seq = (stored[-1].seq + 1) if stored else None
    if not follow:
        return
    if from_start:
        # Continue after what was read: no gap, no repeat.
        info = await bus.js.stream_info(bus.topology.events.name)
        start_seq = start_seq or info.state.last_seq + 1
        policy = api.DeliverPolicy.BY_START_SEQUENCE
    else:
        start_seq, policy = None, api.DeliverPolicy.NEW
    queue: asyncio.Queue[Stored] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await queue.put(to_stored(msg))

    sub = await bus.js.subscribe(
        filter_subject,
        stream=bus.topology.events.name,
        ordered_consumer=True,
        cb=on_msg,
        deliver_policy=policy,
        config=api.ConsumerConfig(opt_start_seq=start_seq) if start_seq else None,
    )
    try:
        while True:
            try:
                yield await asyncio.wait_for(queue.get(), idle_timeout)
            except TimeoutError:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def event_summary(event: CloudEvent) -> str:
    """A short human description of an event's payload for one-line listings."""
    return " ".join(event_facts(event))


def event_facts(event: CloudEvent) -> list[str]:
    """The payload's telling fields, ``key=value`` each, in the order a reader wants them."""
    d = event.data.model_dump(mode="json", exclude_none=True)
    keys = {
        "shoal.goal.submitted": ("fleet", "text"),
        "shoal.goal.planned": (),
        "shoal.task.assigned": ("capability",),
        "shoal.task.started": ("capability", "attempt"),
        "shoal.task.completed": ("capability", "attempt"),
        "shoal.task.failed": ("capability", "attempt", "final", "error"),
        "shoal.model.called": ("model", "input_tokens", "output_tokens"),
        "shoal.tool.called": ("tool", "result_class", "arguments"),
        "shoal.policy.decided": ("action", "target", "decision", "rule"),
        "shoal.approval.requested": ("target", "tier", "action", "reason", "request_id"),
        "shoal.approval.granted": ("by", "reason", "request_id"),
        "shoal.approval.denied": ("by", "expired", "reason", "request_id"),
        "shoal.outcome.reported": ("outcome", "signal"),
        "shoal.budget.exceeded": ("scope", "key", "budget_usd", "spent_usd"),
    }.get(event.type)
    if event.type == "shoal.goal.planned":
        return [f"{len(d.get('tasks', []))} tasks"]
    if keys is None:
        keys = tuple(k for k in d if isinstance(d[k], str | int | float))[:4]
    return [f"{k}={d[k]}" for k in keys if k in d]


def event_line(seq: int, event: CloudEvent) -> str:
    """One line per event: sequence, time, type, session, actor, summary."""
    clock = event.time.strftime("%H:%M:%S.%f")[:-3]
    actor = event.agent or event.source
    return (
        f"#{seq:<6} {clock} {event.short_type:<18} iid={event.iid} {actor} {event_summary(event)}"
    )


def stored_to_json(item: Stored) -> dict[str, Any]:
    """A stored message as JSON: the event with its stream sequence and subject."""
    if item.event is None:
        return {"seq": item.seq, "subject": item.subject, "error": item.error}
    return {
        "seq": item.seq,
        "subject": item.subject,
        "event": item.event.model_dump(mode="json", exclude_none=True),
    }
