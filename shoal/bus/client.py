"""The connection to NATS and the few operations every part of shoal needs on it.

:class:`Bus` publishes events with ``Nats-Msg-Id`` set to the event id (so JetStream drops a
re-publish inside the dedup window), reads a session's or a goal's events back by subject
filter, and dead-letters what cannot be processed. Domain logic lives elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoServersError
from nats.js import api
from nats.js.errors import ServiceUnavailableError
from nats.js.kv import KeyValue

from shoal.bus.connectopts import auth_error, connect_options, redact_url
from shoal.bus.settings import ShoalSettings
from shoal.bus.streams import Topology, provision
from shoal.bus.subjects import Subjects, publisher_tokens
from shoal.bus.tracecontext import with_traceparent
from shoal.errors import InvalidEvent, NatsUnreachable
from shoal.schemas import CONTENT_TYPE, CloudEvent, parse_event

__all__ = ["Bus", "Stored", "event_headers"]

REASON_HEADER = "Shoal-Reason"
ORIGINAL_SUBJECT_HEADER = "Shoal-Original-Subject"
PUBLISH_WINDOW = 4000
"""Most publish acks :meth:`Bus.publish_many` keeps in flight (nats-py's default)."""


def event_headers(event: CloudEvent) -> dict[str, str]:
    """NATS headers of an event: dedup id, content type, and W3C trace context if any."""
    headers = {"Nats-Msg-Id": event.id, "content-type": CONTENT_TYPE}
    if event.traceparent:
        headers["traceparent"] = event.traceparent
    return headers


@dataclass(frozen=True)
class Stored:
    """A message read back from a stream: its sequence, subject, and event or parse error."""

    seq: int
    subject: str
    time: datetime | None
    event: CloudEvent | None
    error: str | None = None
    raw: bytes = b""


class Bus:
    """A NATS connection with shoal's subjects, topology and publish/read operations."""

    def __init__(self, nc: NATS, settings: ShoalSettings) -> None:
        self.nc = nc
        self.settings = settings
        self.js = nc.jetstream(
            timeout=settings.request_timeout, publish_async_max_pending=PUBLISH_WINDOW
        )
        self.subjects = Subjects(settings.prefix)
        self.topology = Topology.for_settings(settings)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, url: str, settings: ShoalSettings, *, name: str = "shoal"
    ) -> AsyncIterator[Bus]:
        """Connect (failing fast with :class:`NatsUnreachable`), yield a Bus, drain on exit."""
        nc = await open_connection(url, settings, name=name)
        try:
            yield cls(nc, settings)
        finally:
            if not nc.is_closed:
                try:
                    await asyncio.wait_for(nc.drain(), timeout=settings.request_timeout)
                except (TimeoutError, nats.errors.ConnectionClosedError):
                    await nc.close()

    async def provision(self, attempts: int = 3) -> list[str]:
        """Create missing streams and buckets (idempotent); return what was created.

        On a young or recovering cluster a JetStream API call can time out although it was
        carried out (the reply was lost) or fail placement while a peer is still starting;
        provisioning is idempotent, so it is simply asked again.
        """
        created: list[str] = []
        for attempt in range(attempts):
            try:
                created += await provision(self.js, self.topology)
                return created
            except (TimeoutError, nats.errors.TimeoutError, ServiceUnavailableError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.5 * 2**attempt)
        return created

    # -- publish ----------------------------------------------------------------------------
    def event_subject(self, event: CloudEvent) -> str:
        """The event-log subject of ``event``: ``<p>.events.<gid|_>.<iid>.<noun>.<verb>``
        followed by its publisher's identity tokens (from ``source``)."""
        publisher = publisher_tokens(event.source)
        return self.subjects.event(event.gid, event.iid, event.short_type, publisher)

    async def publish(self, event: CloudEvent, subject: str | None = None) -> api.PubAck:
        """Publish one event (to the event log unless ``subject`` says otherwise), await ack."""
        event = with_traceparent(event)
        return await self.js.publish(
            subject or self.event_subject(event),
            event.to_json(),
            headers=event_headers(event),
            timeout=self.settings.request_timeout,
        )

    async def publish_many(
        self, items: Iterable[CloudEvent | tuple[str, CloudEvent]]
    ) -> list[api.PubAck]:
        """Publish many events pipelined (many acks in flight), return acks in order."""
        futures = []
        for item in items:
            subject, event = item if isinstance(item, tuple) else (self.event_subject(item), item)
            event = with_traceparent(event)
            # nats-py wraps a bounded window wait (``wait_stall``) in a new task, costing an
            # event-loop round trip and a socket write per message (measured ~4x slower);
            # bound the wait only when the window is full and the wait is real.
            full = self.js.publish_async_pending() >= PUBLISH_WINDOW
            futures.append(
                await self.js.publish_async(
                    subject,
                    event.to_json(),
                    headers=event_headers(event),
                    wait_stall=self.settings.request_timeout if full else None,
                )
            )
        return list(
            await asyncio.wait_for(asyncio.gather(*futures), timeout=self.settings.request_timeout)
        )

    async def record(self, event: CloudEvent, work_subject: str) -> api.PubAck:
        """Publish ``event`` to the event log, then to a work subject (goals or tasks).

        Both carry the same id, so a retry after a crash between the two is de-duplicated
        by each stream; the log copy goes first so the core never misses work that ran.
        """
        await self.publish(event)
        return await self.publish(event, work_subject)

    async def deadletter(
        self, origin: str, raw: bytes, reason: str, original_subject: str = ""
    ) -> api.PubAck:
        """Park an unprocessable message, unchanged, with the reason in a header."""
        msg_id = "dl-" + hashlib.sha256(original_subject.encode() + b"\0" + raw).hexdigest()[:32]
        return await self.js.publish(
            self.subjects.deadletter(origin),
            raw,
            headers={
                "Nats-Msg-Id": msg_id,
                REASON_HEADER: reason.replace("\r", " ").replace("\n", " ")[:1000],
                ORIGINAL_SUBJECT_HEADER: original_subject,
            },
            timeout=self.settings.request_timeout,
        )

    # -- read back --------------------------------------------------------------------------
    async def read(
        self,
        filter_subject: str,
        *,
        stream: str | None = None,
        start_seq: int | None = None,
        batch: int = 1000,
    ) -> list[Stored]:
        """Every message now stored under ``filter_subject``, in stream order."""
        stream = stream or self.topology.events.name
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE
            if start_seq
            else api.DeliverPolicy.ALL,
            opt_start_seq=start_seq,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        psub = await self.js.pull_subscribe(filter_subject, stream=stream, config=config)
        try:
            pending = (await psub.consumer_info()).num_pending
            out: list[Stored] = []
            while pending:
                msgs = await psub.fetch(min(batch, pending), timeout=self.settings.request_timeout)
                out.extend(to_stored(m) for m in msgs)
                pending = msgs[-1].metadata.num_pending
            return out
        finally:
            await psub.unsubscribe()

    async def session_events(self, iid: str) -> list[Stored]:
        """Every stored event of one session (IID), from the event log."""
        return await self.read(self.subjects.session_events(iid))

    async def goal_events(self, gid: str) -> list[Stored]:
        """Every stored event of one goal (GID), all its sessions included."""
        return await self.read(self.subjects.goal_events(gid))

    # -- key-value --------------------------------------------------------------------------
    async def kv(self, name: str) -> KeyValue:
        """A provisioned bucket by its full name (see :attr:`topology`)."""
        return await self.js.key_value(name)


def to_stored(msg: Msg) -> Stored:
    """Decode a JetStream message; a malformed one keeps its error instead of an event."""
    meta = msg.metadata
    try:
        event: CloudEvent | None = parse_event(msg.data)
        error = None
    except InvalidEvent as e:
        event, error = None, str(e)
    return Stored(meta.sequence.stream, msg.subject, meta.timestamp, event, error, msg.data)


async def open_connection(url: str, settings: ShoalSettings, *, name: str) -> NATS:
    """Connect once, fast: an unreachable server is a clear error, not a reconnect loop;
    refused credentials are :class:`AuthorizationFailed`, not "no server reachable"."""
    seen: list[Exception] = []

    async def _quiet(e: Exception) -> None:
        # Connection errors after the first connect are surfaced by the operations that
        # fail; nats-py would otherwise print them to stderr.
        if len(seen) < 20:
            seen.append(e)

    # NATS_URL may list several servers of a cluster, comma-separated.
    servers = [u.strip() for u in url.split(",") if u.strip()]
    try:
        nc = await nats.connect(
            servers,
            name=name,
            connect_timeout=settings.connect_timeout,
            allow_reconnect=True,
            # nats-py applies this limit to the first connect too, where -1 would retry
            # forever: try each server twice, then say so.
            max_reconnect_attempts=2,
            reconnect_time_wait=0.2,
            error_cb=_quiet,
            **connect_options(settings),
        )
    except (NoServersError, OSError, TimeoutError, nats.errors.Error) as e:
        refused = auth_error(url, [*seen, e])
        if refused is not None:
            raise refused from e
        shown = redact_url(url)
        if isinstance(e, (NoServersError, OSError, TimeoutError)):
            raise NatsUnreachable(
                f"no NATS server reachable at {shown}: {e or type(e).__name__}"
            ) from e
        raise NatsUnreachable(f"cannot connect to {shown}: {e}") from e  # a malformed URL…
    # Once connected, ride out outages: a restarted server must not end a long-running
    # process; operations that fail meanwhile raise and are reported where they happen.
    seen.clear()
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 0.5
    return nc
