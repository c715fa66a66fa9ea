"""Interactions with running sessions: append a message, answer a question, decide approvals.

The functions are what ``shoal session send|reply`` and ``shoal approvals grant|deny`` run;
:class:`InteractionsService` offers the same operations as NATS micro endpoints
(``<p>.api.interactions.<endpoint>``, service ``shoal-interactions``, hosted by ``shoal core``)
so other front ends — the console, a chat bridge — use them without a CLI:

| endpoint | request | reply |
|---|---|---|
| ``send`` | ``{"iid", "text", "by"}`` | the recorded ``session.message`` event id |
| ``reply`` | ``{"iid", "text", "by"}`` | the id, and the question answered |
| ``decide`` | ``{"approval", "grant": bool, "by", "reason"}`` | the approval's new state |
| ``pending`` | ``{"fleet"?: …}`` | pending approvals and open questions |

Unknown fields are refused, like every endpoint's.
"""

from __future__ import annotations

import logging

from nats.micro.service import Service
from pydantic import BaseModel, Field

from shoal.aggregates.micro import Handlers, Strict, start_service
from shoal.bus import Bus
from shoal.errors import AuthorizationFailed, NotFound
from shoal.policy import Approvals
from shoal.policy.approvals import ApprovalState
from shoal.schemas import CloudEvent, Endpoint, EventData, SessionAsked, SessionMessage

__all__ = [
    "INTERACTIONS",
    "INTERACTION_ENDPOINTS",
    "InteractionsService",
    "open_questions",
    "record_on_session",
    "reply_to_session",
    "send_message",
]

log = logging.getLogger("shoal.interactions")

INTERACTIONS = "interactions"
MICRO_NAME = "shoal-interactions"


async def _session_events(bus: Bus, iid: str) -> list[CloudEvent]:
    known = [s.event for s in await bus.session_events(iid) if s.event is not None]
    if not known:
        raise NotFound(f"no session {iid!r} on the event log")
    return known


async def record_on_session(bus: Bus, iid: str, data: EventData, *, by: str) -> CloudEvent:
    """Publish ``data`` from the operator ``by`` on a session that exists on the event log
    (its goal, parent and fleet copied from the session's events); :class:`NotFound` if not.
    """
    return await _record(bus, await _session_events(bus, iid), data, by)


async def _record(bus: Bus, known: list[CloudEvent], data: EventData, by: str) -> CloudEvent:
    first = known[0]
    event = CloudEvent.new(
        data,
        iid=first.iid,
        gid=next((e.gid for e in known if e.gid), None),
        parentiid=first.parentiid,
        fleet=first.fleet,
        principal=by,
        source=f"shoal://cli/{by}",
    )
    await bus.publish(event)
    return event


async def send_message(
    bus: Bus, iid: str, text: str, *, by: str, reply_to: str | None = None
) -> CloudEvent:
    """Append ``text`` to a session that exists on the event log."""
    known = await _session_events(bus, iid)
    if any(e.short_type in ("task.completed", "session.killed") for e in known):
        state = "killed" if any(e.short_type == "session.killed" for e in known) else "done"
        raise NotFound(f"session {iid} is {state}; a message would reach no one")
    return await _record(bus, known, SessionMessage(text=text, by=by, reply_to=reply_to), by)


async def open_questions(bus: Bus, iid: str) -> list[SessionAsked]:
    """The session's questions that have no reply yet, oldest first."""
    asked: dict[str, SessionAsked] = {}
    for e in await _session_events(bus, iid):
        if isinstance(e.data, SessionAsked):
            asked.setdefault(e.data.question_id, e.data)
        elif isinstance(e.data, SessionMessage) and e.data.reply_to:
            asked.pop(e.data.reply_to, None)
    return list(asked.values())


async def reply_to_session(
    bus: Bus, iid: str, text: str, *, by: str
) -> tuple[CloudEvent, SessionAsked]:
    """Answer the session's oldest open question; :class:`NotFound` if it asked none."""
    questions = await open_questions(bus, iid)
    if not questions:
        raise NotFound(f"session {iid} is not waiting for input (no open question)")
    event = await send_message(bus, iid, text, by=by, reply_to=questions[0].question_id)
    return event, questions[0]


class SendRequest(Strict):
    iid: str
    text: str = Field(min_length=1, max_length=100_000)
    by: str = Field(min_length=1)


class DecideRequest(Strict):
    approval: str
    grant: bool
    by: str = Field(min_length=1)
    reason: str = ""


class PendingRequest(Strict):
    fleet: str | None = None


class SendReply(BaseModel):
    """The recorded ``session.message`` event's id."""

    id: str
    iid: str


class ReplyReply(SendReply):
    """The recorded message's id and the question it answered."""

    question_id: str


class PendingReply(BaseModel):
    """Pending approvals, oldest first."""

    approvals: list[ApprovalState]


INTERACTION_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(INTERACTIONS, "send", SendRequest, SendReply, "append a message to a session"),
    Endpoint(INTERACTIONS, "reply", SendRequest, ReplyReply, "answer the oldest open question"),
    Endpoint(INTERACTIONS, "decide", DecideRequest, ApprovalState, "grant or deny an approval"),
    Endpoint(INTERACTIONS, "pending", PendingRequest, PendingReply, "pending approvals"),
)
"""Every endpoint of ``shoal-interactions``: request and reply bodies."""


class InteractionsService:
    """The interactions endpoints on one connection."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.service: Service | None = None

    async def start(self) -> None:
        handlers: Handlers = {
            "send": self._send,
            "reply": self._reply,
            "decide": self._decide,
            "pending": self._pending,
        }
        self.service = await start_service(
            self.bus,
            name=MICRO_NAME,
            description="shoal interactions: messages, replies and approvals for sessions",
            endpoints=INTERACTION_ENDPOINTS,
            handlers=handlers,
        )

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    async def _send(self, r: SendRequest) -> SendReply:
        event = await send_message(self.bus, r.iid, r.text, by=r.by)
        return SendReply(id=event.id, iid=r.iid)

    async def _reply(self, r: SendRequest) -> ReplyReply:
        event, question = await reply_to_session(self.bus, r.iid, r.text, by=r.by)
        return ReplyReply(id=event.id, iid=r.iid, question_id=question.question_id)

    async def _decide(self, r: DecideRequest) -> ApprovalState:
        approvals = await Approvals.open(self.bus)
        if (await approvals.get(r.approval)).approver_role == "admin":
            # The endpoint cannot tell an admin caller from an operator (NATS gives the
            # responder no identity; operators may call it): such a grant needs the CLI.
            raise AuthorizationFailed(
                f"approval {r.approval} needs role admin: decide it with "
                "'shoal approvals grant|deny' as an admin"
            )
        return await approvals.decide(r.approval, grant=r.grant, by=r.by, reason=r.reason)

    async def _pending(self, r: PendingRequest) -> PendingReply:
        approvals = await Approvals.open(self.bus)
        return PendingReply(approvals=list(await approvals.list(fleet=r.fleet)))
