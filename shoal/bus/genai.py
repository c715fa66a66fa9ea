"""OpenTelemetry GenAI semantic conventions for shoal: agent, model and tool spans, metrics.

Spans follow the GenAI conventions: ``invoke_agent {agent}`` per task an agent handles,
``chat {model}`` per model call, ``execute_tool {tool}`` per tool call, attributed with
``gen_ai.*`` (operation, provider, models, token usage, agent id/name, conversation id = the
IID, tool name and call id) and ``error.type`` on failure, plus shoal's own ``shoal.gid``,
``shoal.fleet``, ``shoal.instance``, ``shoal.principal`` and ``shoal.policy.decision``.

Tool arguments and results are sensitive: they go on spans only when the settings say so
(``SHOAL_TRACE_CONTENT``), the arguments as the tool gateway already redacted them, the
result by the tool's sensitivity (``secret`` never, ``confidential`` as a length only).

:class:`GenAI` is built once per process from its :class:`~shoal.bus.telemetry.Telemetry`
and passed to whatever opens spans; with telemetry off every method is a cheap no-op.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from shoal.bus.genaimetrics import DURATION_BUCKETS, TOKEN_BUCKETS, AttrKey, ShoalMetrics, Tally
from shoal.bus.telemetry import Telemetry

__all__ = [
    "DURATION_BUCKETS",
    "TOKEN_BUCKETS",
    "AgentCall",
    "Attributes",
    "Call",
    "ChatCall",
    "GenAI",
    "ShoalMetrics",
    "Tally",
    "ToolCall",
    "session_attributes",
]

PROVIDER_SHOAL = "shoal"
"""``gen_ai.provider.name`` of ``invoke_agent``: the agent runs on shoal, not on one model
provider (its ``chat`` spans name the real provider)."""

CONTENT_LIMIT = 4096
"""Longest tool argument/result text put on a span (characters)."""

Attributes = dict[str, str | int | float | bool]


def session_attributes(
    *,
    iid: str,
    fleet: str | None = None,
    agent: str | None = None,
    instance: str | None = None,
    gid: str | None = None,
    parentiid: str | None = None,
    principal: str | None = None,
    version: str | None = None,
) -> Attributes:
    """The attributes every span of a session carries (absent values left out)."""
    attrs: Attributes = {"gen_ai.conversation.id": iid}
    if agent:
        attrs["gen_ai.agent.name"] = agent
        attrs["gen_ai.agent.id"] = f"{fleet}/{agent}" if fleet else agent
    for key, value in (
        ("gen_ai.agent.version", version),
        ("shoal.fleet", fleet),
        ("shoal.instance", instance),
        ("shoal.gid", gid),
        ("shoal.parentiid", parentiid),
        ("shoal.principal", principal),
    ):
        if value:
            attrs[key] = value
    return attrs


class Call:
    """One GenAI operation: a context manager around its span (made current while it runs),
    with the attributes its metrics will carry. With telemetry off it does nothing.

    A class rather than a generator context manager: three of these run per task.
    """

    def __init__(
        self,
        genai: GenAI,
        name: str,
        kind: SpanKind,
        attributes: Attributes,
        metric_attrs: Attributes,
        parent: Context | None = None,
        timed: bool = True,
    ) -> None:
        self.genai = genai
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.metric_attrs = metric_attrs
        self.parent = parent
        self.timed = timed
        self.span: Span = INVALID_SPAN
        self._token: object = None
        self._started = 0.0

    def __enter__(self) -> Self:
        genai = self.genai
        if genai.enabled:
            self._started = time.perf_counter()
            self.span = genai.tracer.start_span(
                self.name, context=self.parent, kind=self.kind, attributes=self.attributes
            )
            self._token = context_api.attach(trace.set_span_in_context(self.span, self.parent))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is None:
            return
        if exc is not None:  # cancellation too: the span must say it did not finish
            self.fail(exc)
        context_api.detach(self._token)  # type: ignore[arg-type]
        self._token = None
        self.span.end()
        if self.timed:
            elapsed = time.perf_counter() - self._started
            self.genai.metrics.operation_duration.record(elapsed, self.metric_attrs)

    def set(self, key: str, value: str | int | float | bool) -> None:
        """Set one span attribute."""
        self.span.set_attribute(key, value)

    def fail(self, error: BaseException) -> None:
        """Mark the operation failed (``error.type``, status, exception event) without raising.

        For callers that handle the error themselves (a task that will be retried).
        """
        error_type = type(error).__name__
        self.span.set_attribute("error.type", error_type)
        self.span.set_status(Status(StatusCode.ERROR, f"{error_type}: {error}"[:500]))
        if isinstance(error, Exception):
            self.span.record_exception(error)
        self.metric_attrs["error.type"] = error_type

    def decided(self, decision: str, rule: str | None = None) -> None:
        """Record the policy decision on the span; count a refusal."""
        self.span.set_attribute("shoal.policy.decision", decision)
        if rule:
            self.span.set_attribute("shoal.policy.rule", rule)
        if decision != "allow":
            attrs: Attributes = {"shoal.policy.decision": decision, "shoal.policy.rule": rule or ""}
            fleet = self.metric_attrs.get("shoal.fleet")
            if fleet is not None:
                attrs["shoal.fleet"] = fleet
            self.genai.metrics.policy_denials.add(1, attrs)


class AgentCall(Call):
    """An ``invoke_agent`` span: one task handled by one agent instance."""


class ChatCall(Call):
    """A ``chat`` span: one model call."""

    def provider(self, name: str) -> None:
        self.span.set_attribute("gen_ai.provider.name", name)
        self.metric_attrs["gen_ai.provider.name"] = name

    def response(
        self,
        *,
        model: str,
        input_tokens: int,
        output_tokens: int,
        finish_reason: str | None = None,
        response_id: str | None = None,
        cost_usd: Decimal | float | None = None,
    ) -> None:
        """Record what the model answered: model, token usage, finish reason, cost."""
        span = self.span
        attrs: dict[str, Any] = {
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
        }
        if finish_reason:
            attrs["gen_ai.response.finish_reasons"] = (finish_reason,)
        if response_id:
            attrs["gen_ai.response.id"] = response_id
        span.set_attributes(attrs)  # one lock, not one per attribute
        self.metric_attrs["gen_ai.response.model"] = model
        usage = self.genai.metrics.token_usage
        usage.record(input_tokens, {**self.metric_attrs, "gen_ai.token.type": "input"})
        usage.record(output_tokens, {**self.metric_attrs, "gen_ai.token.type": "output"})
        if cost_usd is not None:
            span.set_attribute("shoal.cost_usd", float(cost_usd))
            requested = self.metric_attrs["gen_ai.request.model"]
            fleet = self.metric_attrs.get("shoal.fleet")
            by: AttrKey = (("gen_ai.request.model", requested),)
            if fleet is not None:
                by += (("shoal.fleet", fleet),)
            self.genai.metrics.cost.add(float(cost_usd), by)


class ToolCall(Call):
    """An ``execute_tool`` span: one tool call."""

    def arguments(self, redacted: Mapping[str, Any]) -> None:
        """Record the (already redacted) arguments, if content recording is on."""
        if self.genai.record_content:
            text = json.dumps(redacted, default=str, sort_keys=True)[:CONTENT_LIMIT]
            self.span.set_attribute("gen_ai.tool.call.arguments", text)

    def result(self, value: Any, sensitivity: str) -> None:
        """Record the result by the tool's sensitivity, if content recording is on."""
        if not self.genai.record_content or sensitivity == "secret":
            return
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if sensitivity == "confidential":
            text = f"[redacted {len(text)} chars]"
        self.span.set_attribute("gen_ai.tool.call.result", text[:CONTENT_LIMIT])


class GenAI:
    """Opens GenAI spans and records GenAI and shoal metrics for one process."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.tracer = telemetry.tracer
        self.enabled = telemetry.enabled
        self.record_content = telemetry.record_content
        self.goal_sampled = telemetry.goal_sampled
        self.metrics = ShoalMetrics(telemetry)

    @classmethod
    def disabled(cls) -> GenAI:
        """Spans and metrics that go nowhere (tests and tools that do not trace)."""
        return cls(Telemetry.disabled())

    def invoke_agent(
        self,
        agent: str,
        session: Attributes,
        *,
        parent: Context | None = None,
        capability: str | None = None,
        attempt: int | None = None,
    ) -> AgentCall:
        """``with genai.invoke_agent(agent, attrs, parent=ctx) as call:`` around one task.

        ``parent`` is the context extracted from the task message, so a delegated task
        handled in another process continues its goal's trace.
        """
        attrs: Attributes = {"gen_ai.operation.name": "invoke_agent", **session}
        attrs["gen_ai.provider.name"] = PROVIDER_SHOAL
        if capability:
            attrs["shoal.capability"] = capability
        if attempt is not None:
            attrs["shoal.attempt"] = attempt
        metric_attrs = _metric_base("invoke_agent", PROVIDER_SHOAL, session)
        return AgentCall(
            self,
            f"invoke_agent {agent}",
            SpanKind.INTERNAL,
            attrs,
            metric_attrs,
            parent,
            timed=False,  # gen_ai.client.operation.duration times model calls (chat)
        )

    def chat(self, model: str, session: Attributes, *, provider: str | None = None) -> ChatCall:
        """``with genai.chat(model, attrs) as call:`` around one model call."""
        attrs: Attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            **_child_attrs(session),
        }
        if provider:
            attrs["gen_ai.provider.name"] = provider
        metric_attrs = _metric_base("chat", provider, session)
        metric_attrs["gen_ai.request.model"] = model
        return ChatCall(self, f"chat {model}", SpanKind.CLIENT, attrs, metric_attrs)

    def execute_tool(self, tool: str, session: Attributes, *, call_id: str) -> ToolCall:
        """``with genai.execute_tool(tool, attrs, call_id=...) as call:`` around one tool call."""
        attrs: Attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "function",
            **_child_attrs(session),
        }
        metric_attrs = _metric_base("execute_tool", None, session)
        metric_attrs["gen_ai.tool.name"] = tool
        # Not timed: gen_ai.client.operation.duration times model calls (chat).
        return ToolCall(
            self, f"execute_tool {tool}", SpanKind.INTERNAL, attrs, metric_attrs, timed=False
        )

    # -- counters outside any span ----------------------------------------------------------
    def task_started(self, fleet: str, capability: str) -> None:
        self.metrics.tasks_started.add(
            1, (("shoal.fleet", fleet), ("shoal.capability", capability))
        )

    def task_completed(self, fleet: str, capability: str) -> None:
        attrs = (("shoal.fleet", fleet), ("shoal.capability", capability))
        self.metrics.tasks_completed.add(1, attrs)

    def task_failed(self, fleet: str, capability: str, error_type: str, final: bool) -> None:
        attrs = (
            ("shoal.fleet", fleet),
            ("shoal.capability", capability),
            ("error.type", error_type),
            ("shoal.final", final),
        )
        self.metrics.tasks_failed.add(1, attrs)

    def deadlettered(self, origin: str, reason: str) -> None:
        """Count a dead letter; ``reason`` is a short class (``invalid_event``), not the text."""
        self.metrics.deadlettered.add(1, {"shoal.origin": origin, "shoal.reason": reason})

    def instance_started(self, fleet: str, agent: str) -> None:
        self.metrics.active_instances.add(1, (("shoal.fleet", fleet), ("gen_ai.agent.name", agent)))

    def instance_stopped(self, fleet: str, agent: str) -> None:
        attrs = (("shoal.fleet", fleet), ("gen_ai.agent.name", agent))
        self.metrics.active_instances.add(-1, attrs)


CHILD_KEYS = ("gen_ai.conversation.id", "gen_ai.agent.name", "shoal.fleet", "shoal.gid")
"""What ``chat``/``execute_tool`` spans repeat of their session (the rest is on the parent)."""


def _child_attrs(session: Attributes) -> Attributes:
    return {k: session[k] for k in CHILD_KEYS if k in session}


def _metric_base(operation: str, provider: str | None, session: Attributes) -> Attributes:
    # Metric attributes stay low-cardinality: no IIDs, GIDs or instance ids.
    attrs: Attributes = {"gen_ai.operation.name": operation}
    if provider:
        attrs["gen_ai.provider.name"] = provider
    for key in ("shoal.fleet", "gen_ai.agent.name"):
        if key in session:
            attrs[key] = session[key]
    return attrs
