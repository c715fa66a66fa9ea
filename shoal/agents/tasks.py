"""Handling one delivered task or goal: validate, run the handler, ack or retry, report.

The rules of the wire contract live here:

- a payload that is not a valid ``task.assigned`` (or whose input fails the handler's model)
  is dead-lettered with the reason, reported as a final ``task.failed``, and terminated —
  never redelivered;
- ``task.started`` before the handler, ``task.completed`` after it, then the ack;
- a failing attempt is reported (``final=false``) and nak'ed with a doubling delay; after the
  last attempt a ``final=true`` ``task.failed`` and a term — a task is never lost silently;
- a redelivered task whose ``task.completed`` is already on the log (the instance died
  between reporting and acking) is acked without running again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

from nats.aio.msg import Msg
from pydantic import ValidationError

from shoal.agents.agent import GoalHandler, Handler, to_output
from shoal.agents.context import TaskContext
from shoal.agents.delegation import Delegator
from shoal.agents.errors import Killed, PermanentTaskError, PolicyDenied
from shoal.agents.gateways import ModelGateway, ToolGateway, span_attributes
from shoal.agents.inflight import AttemptPolicy, InFlight, KillSettler, releases
from shoal.agents.session import Session
from shoal.bus.genai import AgentCall
from shoal.bus.tracecontext import work_context
from shoal.errors import InvalidEvent, MessageTooLarge
from shoal.schemas import (
    CloudEvent,
    GoalCompleted,
    GoalFailed,
    GoalSubmitted,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    describe_validation_error,
    is_token,
    new_id,
    parse_event,
)

if TYPE_CHECKING:
    from shoal.agents.runtime import AgentRuntime

__all__ = ["TaskRunner"]

log = logging.getLogger(__name__)


class TaskRunner:
    """Runs the handlers of one runtime; each delivered message ends acked, nak'ed or termed."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.rt = runtime
        # In-flight deliveries by id(msg). The runtime's keep-alive loop tells JetStream
        # about the long ones; presence lists their sessions; kills interrupt them.
        self.inflight: dict[int, InFlight] = {}
        self.kills = KillSettler(runtime, self.inflight)

    # -- tasks ------------------------------------------------------------------------------
    async def handle_task(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered
        settings = self.rt.settings
        try:
            event = parse_event(msg.data)
            if not isinstance(event.data, TaskAssigned):
                raise InvalidEvent(f"expected shoal.task.assigned, got {event.type}")
        except InvalidEvent as e:
            await self._reject(msg, str(e), None)
            return
        data = event.data
        # The subject names the capability (it is what the consumer filters on).
        capability = msg.subject.rsplit(".", 1)[-1]
        handler = self.rt.agent.handlers.get(capability)
        if handler is None or data.capability != capability:
            why = f"task for capability {data.capability!r} on the subject of {capability!r}"
            await self._reject(msg, why if handler else f"no handler for {capability!r}", event)
            return
        try:
            task_input = handler.parse(data.input)
        except ValidationError as e:
            await self._reject(msg, f"invalid input: {describe_validation_error(e)}", event)
            return
        session = self._session(event, data.budget_usd, data.goal_budget_usd)
        # A recorded completion wins: checked before the attempt count, so the death of the
        # last attempt's instance between reporting and acking is not turned into a failure.
        if attempt > 1 and await self._already_completed(event):
            await msg.ack()
            return
        if attempt > settings.task_max_deliver:
            # The previous (last) attempt died with its instance: record the end.
            await self._fail(
                msg,
                session,
                data.capability,
                attempt - 1,
                "InstanceLost",
                "the instance running the last attempt was lost",
                final=True,
            )
            return
        with self._invoke_agent(msg, event, session, data.capability, attempt) as call:
            await self._run_task(call, msg, session, data, handler, task_input, attempt)

    async def _run_task(
        self,
        call: AgentCall,
        msg: Msg,
        session: Session,
        data: TaskAssigned,
        handler: Handler,
        task_input: Any,
        attempt: int,
    ) -> None:
        entry, ctx = self._attempt(msg, session, "task", data.capability, attempt)
        emitter = self.rt.emitter
        started = time.perf_counter()
        try:
            await emitter.emit(
                TaskStarted(capability=data.capability, attempt=attempt), session, wait=False
            )
            self.rt.genai.task_started(self.rt.identity.fleet, data.capability)
            if self.kills.covered(entry):
                return  # a kill already covers it: settled by the kill, never run
            try:
                output = await handler.fn(ctx, task_input)
            finally:
                entry.running = False
            if _killed(call, entry):
                return  # it swallowed its cancellation: the kill settled the delivery
            completed = TaskCompleted(
                capability=data.capability,
                output=to_output(output),
                attempt=attempt,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            await emitter.emit(completed, session)
            self.rt.genai.task_completed(self.rt.identity.fleet, data.capability)
        except asyncio.CancelledError:
            if _killed(call, entry):
                _uncancel()  # our own cancellation: the kill settled the delivery
                return
            await msg.nak()  # drain timed out: hand the task to another instance now
            raise
        except Exception as e:
            if _killed(call, entry):
                return  # what the interrupted handler raised; the kill settled the delivery
            call.fail(e)
            await self._on_error(msg, session, data.capability, attempt, e)
            return
        finally:
            self.inflight.pop(id(msg), None)
        await msg.ack()

    async def _on_error(
        self, msg: Msg, session: Session, capability: str, attempt: int, error: Exception
    ) -> None:
        kind = type(error).__name__
        if isinstance(error, Killed) and releases(error.key):
            last = attempt >= self.rt.settings.task_max_deliver
            await self._fail(
                msg, session, capability, attempt, kind, str(error), final=last, delay=False
            )
            return
        final = isinstance(error, PolicyDenied | PermanentTaskError)
        final = final or attempt >= self.rt.settings.task_max_deliver
        if not isinstance(error, PolicyDenied | PermanentTaskError):
            log.info("task %s attempt %d failed: %s: %s", session.iid, attempt, kind, error)
        await self._fail(msg, session, capability, attempt, kind, str(error) or kind, final=final)

    async def _fail(
        self,
        msg: Msg,
        session: Session,
        capability: str,
        attempt: int,
        error_type: str,
        error: str,
        *,
        final: bool,
        delay: bool = True,
    ) -> None:
        """Record a failed attempt, then term (final) or nak (with the back-off if ``delay``)."""
        failed = TaskFailed(
            capability=capability,
            error=error[:2000],
            error_type=error_type,
            attempt=max(1, attempt),
            final=final,
        )
        await self.rt.emitter.emit(failed, session)
        self.rt.genai.task_failed(self.rt.identity.fleet, capability, error_type, final)
        if final:
            await msg.term()
        else:
            await msg.nak(delay=self._retry_delay(attempt) if delay else None)

    def _retry_delay(self, attempt: int) -> float:
        return float(self.rt.settings.task_retry_delay_s * 2 ** max(0, attempt - 1))

    async def _reject(self, msg: Msg, reason: str, event: CloudEvent | None) -> None:
        """Dead-letter an unprocessable task and record a final ``task.failed``."""
        bus = self.rt.bus
        await bus.deadletter("tasks", msg.data, reason, msg.subject)
        self.rt.genai.deadlettered("tasks", "invalid_task")
        session = self._session(event, None) if event else _session_from_raw(msg.data)
        capability = msg.subject.rsplit(".", 1)[-1]
        failed = TaskFailed(
            capability=capability, error=reason[:2000], error_type="InvalidTask", final=True
        )
        await self.rt.emitter.emit(failed, session)
        await msg.term()

    async def _already_completed(self, event: CloudEvent) -> bool:
        bus = self.rt.bus
        subject = bus.subjects.events_filter(iid=event.iid, short_type="task.completed")
        return bool(await bus.read(subject))

    # -- goals ------------------------------------------------------------------------------
    async def handle_goal(self, msg: Msg) -> None:
        handler = self.rt.agent.goal_handler
        assert handler is not None
        attempt = msg.metadata.num_delivered
        try:
            event = parse_event(msg.data)
            if not isinstance(event.data, GoalSubmitted):
                raise InvalidEvent(f"expected shoal.goal.submitted, got {event.type}")
        except InvalidEvent as e:
            await self.rt.bus.deadletter("goals", msg.data, str(e), msg.subject)
            self.rt.genai.deadlettered("goals", "invalid_goal")
            await msg.term()
            return
        session = self._session(event, event.data.budget_usd, event.data.budget_usd)
        if attempt > 1 and await self._goal_finished(event):
            await msg.ack()
            return
        with self._invoke_agent(msg, event, session, "goals", attempt) as call:
            await self._run_goal(call, msg, handler, event.data, session, attempt)

    async def _run_goal(
        self,
        call: AgentCall,
        msg: Msg,
        handler: GoalHandler,
        goal: GoalSubmitted,
        session: Session,
        attempt: int,
    ) -> None:
        entry, ctx = self._attempt(msg, session, "goal", "goals", attempt)
        try:
            if self.kills.covered(entry):
                return
            try:
                outcome = await handler(ctx, goal)
            finally:
                entry.running = False
            if _killed(call, entry):
                return
            if not isinstance(outcome, GoalCompleted | GoalFailed):
                outcome = GoalCompleted(result=outcome if isinstance(outcome, dict) else {})
        except asyncio.CancelledError:
            if _killed(call, entry):
                _uncancel()
                return
            await msg.nak()
            raise
        except Exception as e:
            if _killed(call, entry):
                return
            call.fail(e)
            last = attempt >= self.rt.settings.task_max_deliver or isinstance(e, PolicyDenied)
            if not last:
                log.info("goal %s attempt %d failed: %s", session.gid, attempt, e)
                await msg.nak(delay=self._retry_delay(attempt))
                return
            outcome = GoalFailed(reason=f"{type(e).__name__}: {e}"[:2000])
        finally:
            self.inflight.pop(id(msg), None)
        try:
            await self.rt.emitter.emit(outcome, session)
        except MessageTooLarge as e:  # a refused outcome would leave the goal open for good
            reason = f"the goal's outcome cannot be recorded: {e}"
            await self.rt.emitter.emit(GoalFailed(reason=reason[:2000]), session)
        await msg.ack()

    async def _goal_finished(self, event: CloudEvent) -> bool:
        bus = self.rt.bus
        for short in ("goal.completed", "goal.failed"):
            if await bus.read(
                bus.subjects.events_filter(gid=event.gid, iid=event.iid, short_type=short)
            ):
                return True
        return False

    # -- shared -----------------------------------------------------------------------------
    def _invoke_agent(
        self, msg: Msg, event: CloudEvent, session: Session, capability: str, attempt: int
    ) -> AbstractContextManager[AgentCall]:
        """The ``invoke_agent`` span of one attempt, continuing the trace the message carries
        (else its goal's), so work delegated across processes stays in one trace."""
        rt = self.rt
        traced = rt.genai.enabled  # off: skip the header parsing and attributes, not just spans
        return rt.genai.invoke_agent(
            rt.identity.agent,
            span_attributes(rt.policy, session) if traced else {},
            parent=(
                work_context(msg.headers, event.traceparent, event.gid, rt.genai.goal_sampled)
                if traced
                else None
            ),
            capability=capability,
            attempt=attempt,
        )

    @property
    def current_sessions(self) -> set[str]:
        return {entry.session.iid for entry in self.inflight.values()}

    async def keep_alive(self, older_than: float) -> int:
        """``+WPI`` for every delivery in flight longer than ``older_than`` s; how many."""
        now = time.monotonic()
        long_running = [
            e.msg for e in list(self.inflight.values()) if now - e.started >= older_than
        ]
        for msg in long_running:
            await msg.in_progress()
        return len(long_running)

    def _session(self, event: CloudEvent, budget: Any, goal_budget: Any = None) -> Session:
        return Session(
            iid=event.iid,
            gid=event.gid,
            parentiid=event.parentiid,
            principal=event.principal,
            budget_usd=budget if budget is not None else self.rt.agent.manifest.budget_usd,
            goal_budget_usd=goal_budget if event.gid else None,
            labels=getattr(event.data, "labels", None),
        )

    def _attempt(
        self,
        msg: Msg,
        session: Session,
        kind: Literal["task", "goal"],
        capability: str,
        attempt: int,
    ) -> tuple[InFlight, TaskContext]:
        """Register one attempt as in flight, with its own policy, and build its context."""
        rt = self.rt
        policy = AttemptPolicy.of(rt.policy)
        entry = InFlight(msg, session, kind, capability, attempt, policy)
        entry.task = asyncio.current_task()
        entry.running = True
        self.inflight[id(msg)] = entry
        ctx = TaskContext(
            identity=rt.identity,
            session=session,
            capability=capability,
            attempt=attempt,
            model=ModelGateway(policy, rt.emitter, rt.model_clients, session, rt.genai),
            tools=ToolGateway(
                policy,
                rt.emitter,
                rt.agent.tools,
                rt.tool_env,
                session,
                genai=rt.genai,
                mcp=rt.mcp_tools,
            ),
            delegator=Delegator(rt.bus, rt.emitter, policy, session, resume=attempt > 1),
            settings=rt.settings,
        )
        return entry, ctx


def _killed(call: AgentCall, entry: InFlight) -> bool:
    """True if a kill interrupted this attempt (its span then ends failed, with the kill)."""
    if entry.policy.interrupted is None:
        return False
    call.fail(entry.policy.interrupted)
    return True


def _uncancel() -> None:
    """Take back the kill's cancellation: the attempt's task ends normally (the kill, not
    the task, settles its delivery)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _session_from_raw(raw: bytes) -> Session:
    """Correlation ids from a payload that failed validation, when they are usable."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}

    def token(name: str) -> str | None:
        value = doc.get(name)
        return value if isinstance(value, str) and value and is_token(value) else None

    principal = doc.get("principal")
    return Session(
        iid=token("iid") or new_id(),
        gid=token("gid"),
        parentiid=token("parentiid"),
        principal=principal if isinstance(principal, str) else None,
    )
