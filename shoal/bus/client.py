"""The connection to NATS and the few operations every part of shoal needs on it.

:class:`Bus` publishes events with ``Nats-Msg-Id`` set to the event id (so JetStream drops a
re-publish inside the dedup window), reads a session's or a goal's events back by subject
filter, and dead-letters what cannot be processed. Domain logic lives elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import ObjectNotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from shoal.bus.connection import ConnectionWatch, open_connection
from shoal.bus.deadletter import (
    OBJECT_HEADER,
    OBJECT_STORE_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    REASON_HEADER,
    DeadLetterRecord,
)
from shoal.bus.settings import ShoalSettings
from shoal.bus.streams import Topology, provision, provision_object_store
from shoal.bus.subjects import Subjects, publisher_tokens
from shoal.bus.tracecontext import with_traceparent
from shoal.errors import InvalidEvent
from shoal.schemas import CONTENT_TYPE, CloudEvent, parse_event

__all__ = [
    "ORIGINAL_SUBJECT_HEADER",
    "REASON_HEADER",
    "Bus",
    "Stored",
    "event_headers",
    "open_connection",
    "to_stored",
]

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
        self._deadletter_objects: ObjectStore | None = None

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, url: str, settings: ShoalSettings, *, name: str = "shoal"
    ) -> AsyncIterator[Bus]:
        """Connect (failing fast with :class:`NatsUnreachable`), yield a Bus, drain on exit.

        The task that entered owns the connection: if nats-py closes it for good (a server
        error, revoked credentials; it will not reconnect), that task is cancelled and the
        ``async with`` raises :class:`~shoal.errors.ConnectionLost`, so a long-running
        process ends non-zero instead of idling on a dead connection.
        """
        watch = ConnectionWatch()
        nc = await open_connection(url, settings, name=name, closed_cb=watch.closed)
        watch.arm(nc)
        patrol = asyncio.create_task(watch.patrol(), name=f"{name}-connection-watch")
        try:
            yield cls(nc, settings)
        except (Exception, asyncio.CancelledError) as e:
            if watch.note() is None:
                raise
            raise watch.lost() from (None if isinstance(e, asyncio.CancelledError) else e)
        else:
            if watch.reason is not None and watch.owner is not None and watch.owner.cancelling():
                raise watch.lost()  # the cancellation was swallowed on the way out
        finally:
            watch.closing = True
            patrol.cancel()
            if not nc.is_closed:
                try:
                    await asyncio.wait_for(nc.drain(), timeout=settings.request_timeout)
                except (TimeoutError, nats.errors.Error):  # closed, or reconnecting
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
        """Park an unprocessable message with its reason: a record that always fits.

        A small original is kept inline; a large one goes to the dead-letter object store
        first and the record names it (see :class:`~shoal.bus.deadletter.DeadLetterRecord`).
        """
        spec = self.topology.deadletter_objects
        record = DeadLetterRecord.build(
            raw, reason, original_subject, bucket=spec.name, max_payload=self.nc.max_payload
        )
        if record.object_name is not None:
            await self._keep_object(record.object_name, raw)
        return await self.js.publish(
            self.subjects.deadletter(origin),
            record.body,
            headers=record.headers,
            timeout=self.settings.request_timeout,
        )

    async def deadletter_body(self, msg: Msg | api.RawStreamMsg) -> bytes:
        """The original bytes of a dead-letter record (inline, or from the object store)."""
        headers = msg.headers or {}
        name = headers.get(OBJECT_HEADER)
        if name is None:
            return msg.data or b""
        store = await self.js.object_store(headers.get(OBJECT_STORE_HEADER) or "")
        result = await store.get(name)
        return result.data or b""

    async def _keep_object(self, name: str, raw: bytes) -> None:
        if self._deadletter_objects is None:
            # Provisioned with the other buckets; a server provisioned by an older shoal
            # gets it here rather than losing the dead letter.
            await provision_object_store(self.js, self.topology.deadletter_objects)
            self._deadletter_objects = await self.js.object_store(
                self.topology.deadletter_objects.name
            )
        store = self._deadletter_objects
        try:
            await store.get_info(name)
            return  # the name is a hash of the subject and bytes: already kept
        except ObjectNotFoundError:
            pass
        await store.put(name, raw)

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


def to_stored(msg: Msg, decode: Callable[[bytes], CloudEvent] = parse_event) -> Stored:
    """Decode a JetStream message; a malformed one keeps its error instead of an event.

    ``decode`` must raise :class:`InvalidEvent` as ``parse_event`` does (replay passes the
    one-pass :func:`~shoal.schemas.decode.decode_event`)."""
    meta = msg.metadata
    try:
        event: CloudEvent | None = decode(msg.data)
        error = None
    except InvalidEvent as e:
        event, error = None, str(e)
    return Stored(meta.sequence.stream, msg.subject, meta.timestamp, event, error, msg.data)
