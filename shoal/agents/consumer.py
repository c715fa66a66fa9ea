"""A continuous JetStream pull consumer: messages flow as soon as they are stored.

Why not ``PullSubscription.fetch``: ``fetch(n)`` with ``n > 1`` returns only when the batch
is full or its timeout has passed, so at low load every message waits out the timeout, and
``fetch(1)`` costs a round trip per message. This consumer keeps pull requests outstanding
for the free handler slots (the way nats.go's ``Consume`` does): a message is pushed to us
the moment it is stored, and a new request is sent once half the slots are free again.
Bookkeeping: each request's unfilled count is kept; a delivered message fills the oldest
request, a ``408``/``409`` status ends one, and a request past its expiry is forgotten.

Request subjects (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``) are JetStream's own
protocol, not shoal subjects, so they are built here and not in ``bus/subjects.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

__all__ = ["PullConsumer", "consumer_name"]

log = logging.getLogger(__name__)

STATUS = "Status"


def consumer_name(fleet: str, capability: str) -> str:
    """The durable consumer every instance of a capability shares: ``<fleet>_<capability>``."""
    return f"{fleet}_{capability}"


@dataclass
class _Request:
    deadline: float
    remaining: int


class PullConsumer:
    """Feeds ``handle`` with messages of ``stream``/``durable``, at most ``max_inflight`` at once.

    ``handle`` owns the message: it must ack, nak or term it. ``paused`` is asked before each
    new pull request (kill switches pause a fleet without losing its tasks).
    """

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        handle: Callable[[Msg], Awaitable[None]],
        *,
        max_inflight: int = 8,
        expires_s: float = 2.0,
        paused: Callable[[], bool] = lambda: False,
        recreate: Callable[[], Awaitable[object]] | None = None,
        js_prefix: str = api.DEFAULT_PREFIX,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.durable = durable
        self.handle = handle
        self.max_inflight = max_inflight
        self.expires_s = expires_s
        self.paused = paused
        self.recreate = recreate
        self.lost = False  # the server says the consumer is gone
        self.recreated = 0
        # Ask for more once half the slots are free: fewer, larger pull requests.
        self.threshold = max(1, max_inflight // 2)
        self.next_subject = f"{js_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inflight = 0
        self.received = 0
        self._requests: deque[_Request] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._subscribing = asyncio.Lock()
        self._stopping = False
        self._sub: Subscription | None = None
        self._inbox = ""

    @property
    def outstanding(self) -> int:
        return sum(r.remaining for r in self._requests)

    async def run(self) -> None:
        """Request and dispatch until :meth:`stop`; then return (in-flight work continues)."""
        await self._subscribe()
        while not self._stopping:
            try:
                await self._turn()
            except Exception as e:  # e.g. the connection is closed: say so, keep trying
                log.error("consumer %s: %s", self.durable, e)
                await asyncio.sleep(self.expires_s / 2)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.expires_s / 2)
            except TimeoutError:
                pass

    async def _turn(self) -> None:
        self._forget_expired()
        if self.lost:
            await self._recreate()
        if self.paused() and self._requests:
            # Open requests would keep delivering: drop them with the inbox's interest.
            await self._subscribe()
        want = self.max_inflight - self.inflight - self.outstanding
        if want > 0 and (want >= self.threshold or not self._requests) and not self.paused():
            await self._request(want)

    async def _subscribe(self) -> None:
        """(Re)subscribe on a fresh inbox; the old one's open requests die with it."""
        async with self._subscribing:
            old = self._sub
            self._inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
            self._requests.clear()
            if old is not None:
                # What is already queued goes through _on_msg (released).
                await old.drain()  # type: ignore[no-untyped-call]

    async def withdraw(self) -> None:
        """Paused by a kill: end our open pull requests now, before work is released.

        A delivery counts toward ``max_deliver`` even when we only nak it, so a task the
        kill releases must not be delivered straight back to a paused instance: the
        runtime withdraws the requests first, then naks (on the same connection, so the
        server sees them in that order).
        """
        if self._sub is not None and not self._stopping:
            await self._subscribe()

    async def _recreate(self) -> None:
        log.error("consumer %s on %s is gone; re-creating it", self.durable, self.stream)
        self._requests.clear()
        if self.recreate is None:
            return
        try:
            await self.recreate()
            self.lost = False
            self.recreated += 1
        except Exception as e:  # the server may be unavailable: retry on the next turn
            log.error("cannot re-create consumer %s: %s", self.durable, e)
            await asyncio.sleep(self.expires_s / 2)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, timeout: float) -> bool:
        """Stop requesting, wait for in-flight handlers (up to ``timeout``); True if all ended.

        Dropping the inbox's interest ends our open pull requests on the server (it does not
        deliver to a reply subject nobody listens on); messages already on their way are
        released (nak) so another instance takes them at once.
        """
        self._stopping = True
        self._wake.set()
        if self._sub is not None:
            await self._sub.drain()  # type: ignore[no-untyped-call]
            self._sub = None
        self._requests.clear()
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.05)
        return not self._tasks

    def in_flight_tasks(self) -> set[asyncio.Task[None]]:
        return set(self._tasks)

    async def _request(self, batch: int) -> None:
        expires_ns = int(self.expires_s * 1e9)
        body = json.dumps({"batch": batch, "expires": expires_ns}).encode()
        self._requests.append(_Request(time.monotonic() + self.expires_s + 0.5, batch))
        await self.nc.publish(self.next_subject, body, reply=self._inbox)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        while self._requests and self._requests[0].deadline < now:
            self._requests.popleft()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is not None:
            if status == "100":  # idle heartbeat / flow control
                return
            # 408 request expired, 409 max-waiting or leadership change, 404 no messages:
            # either way one request is over.
            if self._requests:
                self._requests.popleft()
            description = msg.headers.get("Description", "") if msg.headers else ""
            if status == "503" or (status == "409" and "Deleted" in description):
                # 503: no responders, the consumer does not exist (any more).
                self.lost = True
            self._wake.set()
            return
        if self._requests:
            self._requests[0].remaining -= 1
            if self._requests[0].remaining <= 0:
                self._requests.popleft()
        self.received += 1
        if self._stopping:
            await msg.nak()  # draining: let another instance take it now
            return
        if self.paused():
            await msg.nak(delay=self.expires_s)  # killed: back to the queue, not to us now
            self._wake.set()
            return
        self.inflight += 1
        task = asyncio.create_task(self._run_one(msg))
        self._tasks.add(task)

    async def _run_one(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception:
            # The handler owns ack/nak; an escape here is a bug, but must not stop the loop.
            log.exception("task handler crashed on %s", msg.subject)
        finally:
            self.inflight -= 1
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
            # Wake the loop only when it has something to do (a request, or the drain).
            free = self.max_inflight - self.inflight - self.outstanding
            if self._stopping or free >= self.threshold or not self._requests:
                self._wake.set()
