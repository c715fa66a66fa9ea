"""A core partition's receiving half: its feeds on the partition stream, merged in order.

:class:`ShareReceiver` is the :class:`~shoal.aggregates.receiver.Receiver` of one partition
of a partitioned core. Its share of the log arrives on two or three durable push consumers
with one filter each (:meth:`PartitionStream.feeds
<shoal.aggregates.partstream.PartitionStream.feeds>`): each delivers in the stream's order,
but not in step with the others, so a batch is folded only up to the **frontier**, the
highest stream sequence below which every feed has delivered everything it holds. A feed
that has delivered past the batch is clear; a feed behind it is asked (consumer info) whether
anything is pending; while one is, the rest of the batch waits for the next round.

A message two feeds both deliver (a lifecycle event of the partition's own bucket) is folded
once. Each feed is acknowledged (``AckPolicy.ALL``) at its last message of the batch, after
the batch is written. A feed's delivery sequence (1, 2, 3… from :meth:`attach`) has no holes
unless a message was lost on the way: then :class:`DeliveryGap` re-attaches every feed at the
store's position (acknowledging past a lost delivery would lose it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from shoal.aggregates.partstream import PartitionStream
from shoal.aggregates.receiver import (
    CONSUMING_GC_THRESHOLD,
    QUIET_S,
    ConsumerReplaced,
    ConsumerStalled,
    Consuming,
    DeliveryGap,
    Fetched,
    push_config,
    unsubscribe,
)
from shoal.bus import Bus
from shoal.gcpolicy import raise_gc_threshold

__all__ = ["Share", "ShareReceiver"]

log = logging.getLogger("shoal.core")


@dataclass(frozen=True)
class Share:
    """What a core partition reads: partition ``index``'s feeds on the partition stream."""

    stream: PartitionStream
    index: int


@dataclass
class _Feed:
    """One durable consumer of a share, and what it has delivered since attach."""

    name: str
    filter: str
    config: api.ConsumerConfig | None = None
    sub: JetStreamContext.PushSubscription | None = None
    received: int = 0
    """Highest stream sequence it delivered."""
    delivered: int = 0
    """Highest delivery (consumer) sequence it delivered."""
    held: list[tuple[int, Msg]] = field(default_factory=list)
    """Its messages not yet folded, in delivery order (for the acknowledgement)."""


class ShareReceiver(Consuming):
    """The feeds of one partition, read in gap-free batches in the partition stream's order."""

    def __init__(
        self,
        bus: Bus,
        position: Callable[[], int],
        *,
        batch: int = 1000,
        consumer: str,
        share: Share,
    ) -> None:
        super().__init__(bus, position, batch, consumer, share.stream.name)
        self.share = share
        self.idle_upto = 0
        """The log position every feed had delivered up to when last drained."""
        self.feeds = [_Feed(consumer + suffix, f) for suffix, f in share.stream.feeds(share.index)]
        self._buffer: dict[int, Msg] = {}
        self._gap: str | None = None
        self._gc_threshold: tuple[int, int, int] | None = None

    async def attach(self) -> None:
        """(Re)create every feed at the store's position and start receiving."""
        await self.detach()
        self._gc_threshold = raise_gc_threshold(CONSUMING_GC_THRESHOLD)
        js, position = self.bus.js, self.position()
        start = await self.share.stream.start_seq(js, position)
        self._buffer.clear()
        self._gap = None
        for i, feed in enumerate(self.feeds):
            try:
                await js.delete_consumer(self.stream, feed.name)
            except NotFoundError:
                pass
            deliver = self.bus.nc.new_inbox()
            what = "shoal core partition ingestion"
            config = push_config(feed.name, deliver, feed.filter, start, self.batch, what)
            await js.add_consumer(self.stream, config)
            feed.config, feed.received, feed.delivered, feed.held = config, 0, 0, []
            feed.sub = await js.subscribe_bind(
                self.stream, config, feed.name, cb=self._receiver(i), manual_ack=True
            )
        log.info(
            "core consumers %s created on %s at seq %d (log position %d)",
            ", ".join(f.name for f in self.feeds),
            self.stream,
            start or 1,
            position,
        )

    def _receiver(self, index: int) -> Callable[[Msg], object]:
        feed = self.feeds[index]

        async def receive(msg: Msg) -> None:
            seq = msg.metadata.sequence
            if seq.consumer <= feed.delivered:
                return  # a redelivery of what this feed already handed over
            if seq.consumer != feed.delivered + 1 and self._gap is None:
                self._gap = (
                    f"deliveries {feed.delivered + 1}..{seq.consumer - 1} of {feed.name} were lost"
                )
            feed.delivered, feed.received = seq.consumer, seq.stream
            feed.held.append((seq.stream, msg))
            if seq.stream in self._buffer:
                return  # the same event from another feed
            first = not self._buffer
            self._buffer[seq.stream] = msg
            if first:
                self.batching.first()
            elif len(self._buffer) >= self.batch:
                self.batching.arrived.set()

        return receive

    async def fetch(self, timeout: float = 1.0) -> Fetched | None:
        """The next batch up to the feeds' frontier, in order; ``None`` if none in ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            await self._wait(deadline)
            if self._gap is not None:
                raise DeliveryGap(self._gap)
            if not self._buffer:
                return None
            frontier = await self._frontier(max(self._buffer))
            ready = sorted(seq for seq in self._buffer if seq <= frontier)
            if ready:
                return self._take(ready, frontier)
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(QUIET_S)  # a feed is behind: let it deliver
            self.batching.first_at = time.monotonic()

    async def _wait(self, deadline: float) -> None:
        """Until a batch closes (:class:`BatchWindow`), a gap is seen, or ``deadline``."""
        await self.batching.wait(
            lambda: self.batch if self._gap is not None else len(self._buffer), deadline
        )

    async def _frontier(self, upto: int) -> int:
        """The highest sequence <= ``upto`` below which every feed has delivered all it holds."""
        frontier = upto
        for feed in self.feeds:
            if feed.received >= upto:
                continue  # in order: it has delivered everything of its own below ``upto``
            # Clear when nothing is left to deliver and nothing delivered is still on its way:
            # what it delivered and we have not acknowledged is what it holds (the batches
            # before were acknowledged before this fetch; an ack not yet applied only waits).
            info = await self._info(feed)
            if info.num_pending or (info.num_ack_pending or 0) > len(feed.held):
                frontier = min(frontier, feed.received)  # more of it may come below ``upto``
        return frontier

    def _take(self, ready: list[int], frontier: int) -> Fetched:
        share = self.share.stream
        messages = [share.decode(self._buffer.pop(seq)) for seq in ready]
        acks: list[Msg] = []
        for feed in self.feeds:
            upto = [m for s, m in feed.held if s <= frontier]
            if upto:
                acks.append(upto[-1])
                feed.held = [(s, m) for s, m in feed.held if s > frontier]
        messages.sort(key=lambda r: r.seq)
        if self._buffer:
            self.batching.first_at = time.monotonic()
        return Fetched(messages, acks[0], tuple(acks[1:]))

    async def _info(self, feed: _Feed) -> api.ConsumerInfo:
        try:
            info = await self.bus.js.consumer_info(self.stream, feed.name)
        except NotFoundError:
            raise ConsumerReplaced(f"consumer {feed.name} was deleted") from None
        want = feed.config
        if want is not None and (
            info.config.filter_subject != want.filter_subject
            or info.config.deliver_subject != want.deliver_subject
        ):
            raise ConsumerReplaced(f"consumer {feed.name} was changed by another client")
        return info

    async def drained(self, *, stalled: bool) -> bool:
        """True when no feed has anything left to deliver; raise if delivery stalled."""
        last = await self.share.stream.origin_of_last(self.bus.js)  # first: see ``idle_upto``
        pending = 0
        for feed in self.feeds:
            info = await self._info(feed)
            pending += info.num_pending + (info.num_ack_pending or 0)
            if info.num_pending and stalled:
                raise ConsumerStalled(
                    f"{feed.name}: {info.num_pending} pending and "
                    f"{info.num_ack_pending} unacknowledged, nothing delivered"
                )
        if pending or self._buffer:
            return False
        # Every feed delivered and acknowledged (after its batch was written) everything up
        # to the stream's last message: the share has folded the log that far.
        self.idle_upto = last[1]
        return True

    async def detach(self) -> None:
        """Stop receiving (un-acknowledged messages are read again by the next run)."""
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)
            self._gc_threshold = None
        for feed in self.feeds:
            if feed.sub is not None:
                sub, feed.sub = feed.sub, None
                await unsubscribe(sub, self.bus.settings.request_timeout)
