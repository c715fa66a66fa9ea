"""The partition stream: the server sends each core partition its own share of the log.

A partitioned core (``--partitions N``) does not read ``SHOAL_EVENTS`` itself. The server
sources it into ``SHOAL_EVENTS_P<N>`` through one subject transform that puts NATS's own
``{{partition(N, k)}}`` (FNV-1a, as :func:`~shoal.aggregates.partitions.fnv1a32`) of the GID
token and of the IID token in front of the rest of the subject::

    <prefix>.events.<gid>.<iid>.<noun>.<verb>.<publisher…>
      → <prefix>.partitioned.<N>.<hash(gid)>.<hash(iid)>.<noun>.<verb>.<publisher…>

Each partition reads its share through single-filter durable consumers (*feeds*,
:meth:`PartitionStream.feeds`), merged in this stream's order
(:class:`~shoal.aggregates.sharefeed.ShareReceiver`):

- ``main``, ``….<k>.>``: the events whose GID hashes to it, its goals (for the partition
  ``h_`` the token ``_`` hashes to, also every bare task);
- ``bare`` (every partition but ``h_``), ``….<h_>.<k>.>``: the bare tasks (GID ``_``) whose IID
  hashes to it, and the events of ``h_``'s goals whose IID happens to, which it steps over;
- ``life``, ``….*.*.agent.>``: every instance lifecycle event, which every partition folds.

So ``h_`` receives every bare task and folds its own, and each other partition receives its
share plus a ``1/N`` slice of ``h_``'s goal traffic; the processor steps over what is not its
own by the original subject (:class:`~shoal.aggregates.processor.CoreProcessor`). Why not
exact, and why feeds and not one consumer with several filters, both measured here
(docs/scale.md): a subject filter cannot say "GID is not ``_``"; a consumer with several
filters is delivered ~2,800-4,800 messages/s once the stream holds a few hundred distinct
subjects (one per publishing instance and type), against ~15,000 for one filter; and a
source with several transforms is read at ~900 messages/s against ~16,000 for one.

A subject with fewer than three tokens after ``<prefix>.events`` is not sourced (no
publisher's permissions allow one; see docs/scale.md).

The fold keeps working in the log's own terms: the server adds ``Nats-Stream-Source``
(``<stream> <seq> <filter> <dest> <original subject> <id>``) to every sourced message, and
:meth:`PartitionStream.origin` gives the fold the original subject and ``SHOAL_EVENTS``
sequence. So positions, tracking, the spend aggregator's watermark and every answer are the
single core's; only the consumers' cursors are sequences of this stream
(:meth:`PartitionStream.start_seq` maps the store's position to one).
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from shoal.aggregates.batch import RawMessage
from shoal.aggregates.partitions import SHARED_TYPES, fnv1a32
from shoal.bus.streams import StreamSpec
from shoal.bus.subjects import NO_GID

__all__ = ["PartitionStream"]

log = logging.getLogger("shoal.core")

SOURCE_HEADER = "Nats-Stream-Source"

LIFECYCLE_NOUN = "agent"
"""The noun of every instance lifecycle event, and of nothing else."""
assert {noun for noun, _ in SHARED_TYPES} == {LIFECYCLE_NOUN}


class PartitionStream:
    """``SHOAL_EVENTS_P<N>``: the event log as the N partitions of a core read it."""

    def __init__(self, events: StreamSpec, prefix: str, count: int) -> None:
        self.events = events
        self.prefix = prefix
        self.count = count
        self.name = f"{events.name}_P{count}"
        self.base = f"{prefix}.partitioned.{count}"
        self.bare_home = fnv1a32(NO_GID.encode()) % count

    # -- the stream ----------------------------------------------------------------------------
    def transform(self) -> api.SubjectTransform:
        """The one transform (a source with several is read far slower, see the module doc)."""
        n = self.count
        return api.SubjectTransform(
            src=f"{self.prefix}.events.*.*.>",
            dest=f"{self.base}.{{{{partition({n},1)}}}}.{{{{partition({n},2)}}}}.>",
        )

    def config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            description=f"The event log routed to a core of {self.count} partitions",
            subjects=[],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=self.events.replicas,
            # The log is already de-duplicated; the server's minimum, so a re-sourced log
            # (a new N) is not thinned by ids JetStream saw minutes apart on the log.
            duplicate_window=0.1,
            max_age=self.events.max_age_s,
            sources=[
                api.StreamSource(name=self.events.name, subject_transforms=[self.transform()])
            ],
        )

    async def ensure(self, js: JetStreamContext) -> None:
        """Create the stream if it is missing (every core process asks; it is idempotent)."""
        try:
            await js.stream_info(self.name)
            return
        except NotFoundError:
            pass
        try:
            await js.add_stream(self.config())
            log.info("created %s: the event log sourced for %d partitions", self.name, self.count)
        except BadRequestError as e:
            if e.err_code != 10058:  # created by another core process meanwhile
                raise

    # -- one partition's consumer ---------------------------------------------------------------
    def feeds(self, index: int) -> list[tuple[str, str]]:
        """Partition ``index``'s feeds: (consumer name suffix, its one subject filter)."""
        b, h = self.base, self.bare_home
        out = [("", f"{b}.{index}.>")]
        if index != h:
            out.append(("-bare", f"{b}.{h}.{index}.>"))
        out.append(("-life", f"{b}.*.*.{LIFECYCLE_NOUN}.>"))
        return out

    async def start_seq(self, js: JetStreamContext, position: int) -> int | None:
        """This stream's first sequence past the log's ``position``; ``None``: from the start.

        The stream holds the log in its own order, so the origin sequences rise with this
        stream's: a binary search over a few ``get_msg`` calls.
        """
        if position <= 0:
            return None
        state = (await js.stream_info(self.name)).state
        lo, hi = state.first_seq, state.last_seq
        if not state.messages or await self._origin_at(js, hi) <= position:
            return max(hi, 0) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if await self._origin_at(js, mid) <= position:
                lo = mid + 1
            else:
                hi = mid
        return lo

    async def origin_of_last(self, js: JetStreamContext) -> tuple[int, int]:
        """(this stream's last sequence, the log sequence it came from); (0, 0) if empty."""
        last = (await js.stream_info(self.name)).state.last_seq
        if not last:
            return 0, 0
        return last, await self._origin_at(js, last)

    async def _origin_at(self, js: JetStreamContext, seq: int) -> int:
        found = await js.get_msg(self.name, seq=seq, subject=f"{self.base}.>", next=True)
        return self.origin(found.headers, found.seq)[0]

    # -- decoding ---------------------------------------------------------------------------------
    def origin(self, headers: dict[str, str] | None, seq: int | None) -> tuple[int, str]:
        """The log sequence and subject a message of this stream was sourced from."""
        value = (headers or {}).get(SOURCE_HEADER, "")
        parts = value.split(" ")
        if len(parts) < 5 or parts[0] != self.events.name or not parts[1].isdigit():
            raise RuntimeError(
                f"{self.name} #{seq} has no usable {SOURCE_HEADER} header ({value!r}): "
                "the partitioned core needs nats-server 2.11 or later"
            )
        return int(parts[1]), parts[4]

    def decode(self, msg: Msg) -> RawMessage:
        """A delivered message as the fold takes it: the log's sequence and subject."""
        seq, subject = self.origin(msg.headers, None)
        return RawMessage(seq, subject, msg.data)
