"""Conversations mid-flight: messages appended to a running session, and questions it asks.

A person (the CLI's ``session send``/``reply``, the console, a chat bridge through the
interactions endpoints) appends ``session.message`` events to a session's log. A handler
reads them with ``ctx.messages()`` (what was already sent, then what arrives) and asks with
``await ctx.ask("question", timeout=...)``: that records ``session.asked`` — the session is
``awaiting_input`` until a ``session.message`` with ``reply_to`` = the question's id arrives.

Everything is on the event log, so nothing is lost when the instance restarts while it
waits: the redelivered task runs the handler again, which asks the same question (its id is
derived from the session, the question's place in the handler and its text), finds the reply
already on the log if it came meanwhile, and otherwise waits again without asking twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.aio.msg import Msg

from shoal.agents.session import Emitter, Session
from shoal.bus import Bus
from shoal.errors import ShoalError
from shoal.schemas import SessionAsked, SessionMessage, parse_event

__all__ = ["Conversation", "InputTimeout", "question_id"]


class InputTimeout(ShoalError):
    """Nobody replied to the session's question in time."""

    code = "input_timeout"


def question_id(iid: str, n: int, question: str) -> str:
    """The id of the ``n``-th question a handler asks in session ``iid``."""
    return "q-" + hashlib.sha256(f"{iid}:{n}:{question}".encode()).hexdigest()[:20]


class Conversation:
    """The messages of one session, and the questions its handler asks."""

    def __init__(self, bus: Bus, emitter: Emitter, session: Session) -> None:
        self.bus = bus
        self.emitter = emitter
        self.session = session
        self._asked = 0
        self.subject = bus.subjects.session_events_of_type(session.iid, SessionMessage.short_type())

    async def history(self) -> list[tuple[str, SessionMessage]]:
        """Every message appended to the session so far, in order, with its event id."""
        stored = await self.bus.read(self.subject)
        return [
            (s.event.id, s.event.data)
            for s in stored
            if s.event is not None and isinstance(s.event.data, SessionMessage)
        ]

    async def messages(self) -> AsyncIterator[SessionMessage]:
        """Messages (not replies) already sent, then each new one as it arrives."""
        queue: asyncio.Queue[tuple[str, SessionMessage]] = asyncio.Queue()
        sub = await self.bus.nc.subscribe(self.subject, cb=self._into(queue))
        try:
            seen: set[str] = set()
            for event_id, message in await self.history():
                seen.add(event_id)
                if message.reply_to is None:
                    yield message
            while True:
                event_id, message = await queue.get()
                if event_id in seen:  # arrived live while the log was being read
                    continue
                seen.add(event_id)
                if message.reply_to is None:
                    yield message
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def ask(self, question: str, *, timeout: float | None = None) -> str:
        """Ask a person; wait for the reply and return its text (:class:`InputTimeout`)."""
        self._asked += 1
        qid = question_id(self.session.iid, self._asked, question)
        queue: asyncio.Queue[tuple[str, SessionMessage]] = asyncio.Queue()
        sub = await self.bus.nc.subscribe(self.subject, cb=self._into(queue))
        try:
            for _, message in await self.history():
                if message.reply_to == qid:
                    return message.text
            asked = SessionAsked(question_id=qid, question=question, timeout_s=timeout)
            await self.emitter.emit(asked, self.session, id=f"{self.session.iid}-{qid}")
            return await asyncio.wait_for(self._reply(queue, qid), timeout)
        except TimeoutError as e:
            raise InputTimeout(f"no reply to {question!r} within {timeout:g}s") from e
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    @staticmethod
    async def _reply(queue: asyncio.Queue[tuple[str, SessionMessage]], qid: str) -> str:
        while True:
            _, message = await queue.get()
            if message.reply_to == qid:
                return message.text

    @staticmethod
    def _into(
        queue: asyncio.Queue[tuple[str, SessionMessage]],
    ) -> Callable[[Msg], Awaitable[None]]:
        async def receive(msg: Msg) -> None:
            try:
                event = parse_event(msg.data)
            except ShoalError:
                return  # not a valid event: the core dead-letters it from the log
            if isinstance(event.data, SessionMessage):
                queue.put_nowait((event.id, event.data))

        return receive
