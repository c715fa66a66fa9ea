"""Delegation: publish a child task (new IID, ``parentiid`` set, same GID) and await its end.

A child's result comes back as events on the event log, not as a reply: the child's
``task.completed`` (or its final ``task.failed``) is published to
``<p>.events.<gid>.<child iid>.task.*``. :class:`OutcomeWatch` subscribes to that subject
*before* the task is published, so the answer cannot slip past; the core sees the same
events, which is how the parent/child tree is recorded.

Re-delegation is recognised, not repeated. A planned child's ``task.assigned`` has an id
derived from its IID (:func:`derived_id`), so publishing it twice is de-duplicated by
JetStream. A resumed goal (a redelivery: its orchestrator was killed, or died) reads the
log first: a child whose outcome is recorded is not assigned again, one whose assignment
is recorded is awaited (its task is still on the work queue), and only the others are
assigned (:meth:`Delegator.fan_out` with ``resume``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shoal.agents.errors import DelegationFailed
from shoal.agents.policy import Policy
from shoal.agents.session import Emitter, Session
from shoal.bus import Bus
from shoal.errors import InvalidEvent
from shoal.schemas import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    CloudEvent,
    GoalPlanned,
    Labels,
    PlannedTask,
    SessionAsked,
    SessionMessage,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    new_id,
    parse_event,
    utcnow,
)

__all__ = [
    "Delegator",
    "OutcomeWatch",
    "assign_task",
    "child_session",
    "derived_id",
    "result_of",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _base32(value: int, length: int) -> str:
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(length)))


def derived_id(parent: str, *parts: object) -> str:
    """The same id for the same ``parent`` and ``parts``, every time (re-runs name the same
    child, so JetStream de-duplicates its events and the core recognises it).

    ULID-shaped: a ULID ``parent``'s 10-character time prefix is kept (derived ids sort
    with their parent), the other 16 characters come from a SHA-256 of the inputs.
    """
    digest = hashlib.sha256("\0".join([parent, *map(str, parts)]).encode()).digest()
    value = int.from_bytes(digest[:16], "big")
    head = parent[:10].upper()
    if len(parent) != 26 or head[0] > "7" or any(c not in _CROCKFORD for c in head):
        head = _base32(value >> 80, 10)
    return head + _base32(value, 16)


class OutcomeWatch:
    """Futures for the outcome (``task.completed`` / final ``task.failed``) of child IIDs.

    The live subscription is core NATS: what is published while the connection is down
    (a reconnect) never reaches it. So a wait that lasts longer than ``catch_up_s`` reads
    the stored outcomes from the event log, once per interval for all waiters.
    """

    def __init__(self, bus: Bus, filter_subject: str, catch_up_s: float = 5.0) -> None:
        self.bus = bus
        self.filter_subject = filter_subject
        self.catch_up_s = catch_up_s
        self.futures: dict[str, asyncio.Future[CloudEvent]] = {}
        self.catch_ups = 0
        self._sub: Subscription | None = None
        self._catching_up = asyncio.Lock()
        self._last_catch_up = time.monotonic()

    @classmethod
    async def for_goal(cls, bus: Bus, gid: str) -> OutcomeWatch:
        """One subscription covering every session of goal ``gid``."""
        watch = cls(bus, bus.subjects.task_outcomes(gid))
        await watch._open()
        return watch

    @classmethod
    async def for_session(cls, bus: Bus, gid: str | None, iid: str) -> OutcomeWatch:
        watch = cls(bus, bus.subjects.task_outcomes(gid, iid))
        await watch._open()
        return watch

    def expect(self, iids: Iterable[str]) -> None:
        loop = asyncio.get_running_loop()
        for iid in iids:
            self.futures.setdefault(iid, loop.create_future())

    async def outcome(self, iid: str, timeout: float | None) -> CloudEvent:
        """The child's terminal event; :class:`DelegationFailed` if none within ``timeout``.

        Time the child spends waiting for a person (a pending approval, an unanswered
        question) does not count: those waits have their own deadlines (the approval
        timeout, the question's), and a goal must not fail while its task is parked.
        """
        self.expect([iid])
        future = self.futures[iid]
        deadline = None if timeout is None else time.monotonic() + timeout
        while not future.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0 and await self.awaits_a_person(iid):
                deadline, left = time.monotonic() + self.catch_up_s, self.catch_up_s
            if left is not None and left <= 0:
                raise DelegationFailed(
                    f"no outcome for task {iid} within {timeout:g}s", iid=iid, error_type="Timeout"
                )
            wait = self.catch_up_s if left is None else min(left, self.catch_up_s)
            try:
                await asyncio.wait_for(asyncio.shield(future), wait)
            except TimeoutError:
                await self.catch_up()
        return future.result()

    async def awaits_a_person(self, iid: str) -> bool:
        """True while the session has a high-tier approval undecided or a question
        unanswered, and its own deadline (recorded with it) has not passed."""
        waiting: dict[str, float] = {}  # request or question id -> its deadline (epoch s)
        for stored in await self.bus.read(self.bus.subjects.session_events(iid)):
            event = stored.event
            data = event.data if event is not None else None
            if event is not None and isinstance(data, ApprovalRequested | SessionAsked):
                if isinstance(data, ApprovalRequested) and data.tier == "medium":
                    continue  # ran already; reviewed after the fact
                key = data.request_id if isinstance(data, ApprovalRequested) else data.question_id
                until = math.inf if data.timeout_s is None else data.timeout_s
                waiting[key] = event.time.timestamp() + until
            elif isinstance(data, ApprovalGranted | ApprovalDenied):
                waiting.pop(data.request_id, None)
            elif isinstance(data, SessionMessage) and data.reply_to:
                waiting.pop(data.reply_to, None)
        now = utcnow().timestamp()
        return any(now < until for until in waiting.values())

    async def catch_up(self) -> None:
        """Resolve waiters from the event log (at most once per ``catch_up_s``)."""
        async with self._catching_up:
            if time.monotonic() - self._last_catch_up < self.catch_up_s:
                return
            for stored in await self.bus.read(self.filter_subject):
                if stored.event is not None:
                    self._resolve(stored.event)
            self._last_catch_up = time.monotonic()
            self.catch_ups += 1

    async def close(self) -> None:
        if self._sub is not None:
            # A closed connection has no subscription left to remove: nothing to report.
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def __aenter__(self) -> OutcomeWatch:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _open(self) -> None:
        self._sub = await self.bus.nc.subscribe(self.filter_subject, cb=self._on_msg)
        # A round trip guarantees the server registered the interest before we publish.
        await self.bus.nc.flush(timeout=math.ceil(self.bus.settings.request_timeout))

    async def _on_msg(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.data)
        except InvalidEvent:
            return  # the core dead-letters malformed events; nothing to resolve here
        self._resolve(event)

    def _resolve(self, event: CloudEvent) -> None:
        data = event.data
        terminal = isinstance(data, TaskCompleted) or (isinstance(data, TaskFailed) and data.final)
        future = self.futures.get(event.iid)
        if terminal and future is not None and not future.done():
            future.set_result(event)


def merged_labels(parent: Labels | None, own: Labels | None) -> Labels | None:
    """A child's labels: the parent's, with the ones the delegating handler set on top."""
    if own is None or parent is None:
        return own or parent
    return Labels(**{**parent.values(), **own.values()})


def child_session(
    parent: Session, budget_usd: Decimal | None = None, labels: Labels | None = None
) -> Session:
    """A child session: new IID, the parent's GID, principal and labels, ``parentiid`` set."""
    return Session(
        iid=new_id(),
        gid=parent.gid,
        parentiid=parent.iid,
        principal=parent.principal,
        budget_usd=budget_usd,
        goal_budget_usd=parent.goal_budget_usd,
        labels=merged_labels(parent.labels, labels),
    )


async def assign_task(
    bus: Bus,
    emitter: Emitter,
    fleet: str,
    capability: str,
    session: Session,
    input: dict[str, Any],
    *,
    id: str | None = None,
) -> CloudEvent:
    """Record ``task.assigned`` on the log and put it on the capability's work queue.

    With ``id`` (a planned child's, from :func:`derived_id`) a second assignment of the
    same child within the streams' duplicate window is dropped by JetStream."""
    event = emitter.event(
        TaskAssigned(
            capability=capability,
            input=input,
            budget_usd=session.budget_usd,
            goal_budget_usd=session.goal_budget_usd,
            labels=session.labels,
        ),
        session,
        id=id,
    )
    await bus.record(event, bus.subjects.tasks(fleet, capability))
    return event


def result_of(event: CloudEvent) -> dict[str, Any]:
    """A child's output, or :class:`DelegationFailed` for a final ``task.failed``."""
    data = event.data
    if isinstance(data, TaskCompleted):
        return data.output
    assert isinstance(data, TaskFailed)
    raise DelegationFailed(
        f"task {event.iid} ({data.capability}) failed: {data.error}",
        iid=event.iid,
        error_type=data.error_type,
    )


class Delegator:
    """``ctx.delegate``: child tasks of one session, in the same fleet."""

    def __init__(
        self, bus: Bus, emitter: Emitter, policy: Policy, session: Session, *, resume: bool = False
    ) -> None:
        self.bus = bus
        self.emitter = emitter
        self.policy = policy
        self.session = session
        self.resume = resume  # a redelivered goal: what the log records is not done again
        self.reassigned = 0  # planned children put on the queue again on a resume

    async def recorded_plan(self) -> list[PlannedTask] | None:
        """The plan this session already recorded (``goal.planned``), if any."""
        bus, session = self.bus, self.session
        if session.gid is None:
            return None
        subject = bus.subjects.events_filter(
            gid=session.gid, iid=session.iid, short_type=GoalPlanned.type
        )
        plans = [s.event.data for s in await bus.read(subject) if s.event is not None]
        return next((list(p.tasks) for p in reversed(plans) if isinstance(p, GoalPlanned)), None)

    async def _recorded_assignments(self, watch: OutcomeWatch) -> dict[str, CloudEvent]:
        """Resolve ``watch`` from the outcomes on the log; the recorded assignments by IID."""
        assigned: dict[str, CloudEvent] = {}
        for stored in await self.bus.read(watch.filter_subject):
            event = stored.event
            if event is None:
                continue
            watch._resolve(event)
            if isinstance(event.data, TaskAssigned):
                assigned[event.iid] = event
        return assigned

    async def fan_out(
        self, planned: Sequence[PlannedTask], *, timeout: float | None = 300.0
    ) -> list[CloudEvent]:
        """Assign planned child tasks (their IIDs fixed by the plan) and await every outcome.

        Returns each task's terminal event (``task.completed`` or final ``task.failed``), in
        plan order. One subscription covers the whole goal.
        """
        gid = self.session.gid
        if gid is None:
            raise DelegationFailed("fan_out needs a goal (GID)", iid=self.session.iid)
        for task in planned:
            await self.policy.check(self.session, "delegate", task.capability)
        fleet = self.policy.identity.fleet
        async with await OutcomeWatch.for_goal(self.bus, gid) as watch:
            watch.expect(t.iid for t in planned)
            assigned = await self._recorded_assignments(watch) if self.resume else {}
            for task in planned:
                if watch.futures[task.iid].done():
                    continue  # its outcome is on the log: nothing to do again
                recorded = assigned.get(task.iid)
                if recorded is not None:
                    await self._requeue(recorded, fleet, task.capability)
                    continue
                child = child_session(self.session)
                child.iid = task.iid
                await assign_task(
                    self.bus,
                    self.emitter,
                    fleet,
                    task.capability,
                    child,
                    task.input,
                    id=derived_id(task.iid, "assigned"),
                )
            return list(await asyncio.gather(*(watch.outcome(t.iid, timeout) for t in planned)))

    async def _requeue(self, assigned: CloudEvent, fleet: str, capability: str) -> None:
        """A recorded assignment whose work-queue copy may be missing (the orchestrator died
        between the two publishes): put it on the queue again under the same id, which
        JetStream drops if the first copy landed. Past the duplicate window that guarantee
        is gone, so an older assignment is only awaited (its copy is on the queue)."""
        age = (utcnow() - assigned.time).total_seconds()
        if age < self.bus.topology.tasks.duplicate_window_s:
            await self.bus.publish(assigned, self.bus.subjects.tasks(fleet, capability))
            self.reassigned += 1

    async def assign(
        self,
        capability: str,
        input: dict[str, Any],
        *,
        budget_usd: Decimal | None = None,
        labels: Labels | None = None,
    ) -> str:
        """Publish a child task without waiting; return the child's IID.

        ``labels`` are set on the child over this session's own (e.g. a task class)."""
        await self.policy.check(self.session, "delegate", capability)
        child = child_session(self.session, budget_usd, labels)
        fleet = self.policy.identity.fleet
        await assign_task(self.bus, self.emitter, fleet, capability, child, input)
        return child.iid

    async def delegate(
        self,
        capability: str,
        input: dict[str, Any],
        *,
        timeout: float | None = 300.0,
        budget_usd: Decimal | None = None,
        labels: Labels | None = None,
    ) -> dict[str, Any]:
        """Publish a child task and return its output (:class:`DelegationFailed` if it failed)."""
        await self.policy.check(self.session, "delegate", capability)
        child = child_session(self.session, budget_usd, labels)
        fleet = self.policy.identity.fleet
        async with await OutcomeWatch.for_session(self.bus, child.gid, child.iid) as watch:
            watch.expect([child.iid])
            await assign_task(self.bus, self.emitter, fleet, capability, child, input)
            return result_of(await watch.outcome(child.iid, timeout))
