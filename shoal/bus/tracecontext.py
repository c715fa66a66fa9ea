"""Trace context on the wire: W3C ``traceparent`` in NATS headers and in every event.

Trace context crosses NATS in W3C ``traceparent``/``tracestate`` headers, written and read by
the OpenTelemetry API's propagators (:func:`inject_headers`, :func:`extract_context`). Every
event published inside a span also carries the CloudEvents ``traceparent`` attribute
(:func:`with_traceparent`, applied by :meth:`Bus.publish`), so a session's timeline links to
its trace. Only the OpenTelemetry API is imported here (the SDK is :mod:`shoal.bus.telemetry`),
so the publish path pays nothing for it at import and one context lookup per event when no
span is active.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, MutableMapping
from contextlib import suppress
from weakref import WeakKeyDictionary

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from ulid import ULID

from shoal.schemas import CloudEvent

__all__ = [
    "current_traceparent",
    "extract_context",
    "goal_context",
    "goal_trace_id",
    "inject_headers",
    "with_traceparent",
    "work_context",
]

TRACEPARENT = "traceparent"


def inject_headers(
    headers: MutableMapping[str, str], context: Context | None = None
) -> MutableMapping[str, str]:
    """Add the current (or ``context``'s) trace context to NATS ``headers``; return them.

    Uses the globally configured propagators (``OTEL_PROPAGATORS``, default W3C trace
    context and baggage). Outside any span this is one context lookup and adds nothing.
    """
    if trace.get_current_span(context).get_span_context().is_valid:
        propagate.inject(headers, context=context)
    return headers


def extract_context(
    headers: Mapping[str, str] | None, traceparent: str | None = None
) -> Context | None:
    """The remote parent context carried by a message, or ``None`` if it carries none.

    ``headers`` are the NATS headers; ``traceparent`` (the CloudEvent attribute) is the
    fallback for a publisher that put trace context only in the event body.
    """
    carrier: dict[str, str] = dict(headers) if headers else {}
    if TRACEPARENT not in carrier:
        if not traceparent:
            return None
        carrier[TRACEPARENT] = traceparent
    context = propagate.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None  # a malformed traceparent: start a new trace rather than fail the message
    return context


_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENTS: WeakKeyDictionary[Span, str] = WeakKeyDictionary()
"""Each live span's ``traceparent``, written by the propagator once per span: every event a
span publishes carries it (four events, three spans a typical task)."""


def current_traceparent(context: Context | None = None) -> str | None:
    """The W3C ``traceparent`` of the current span (or ``context``'s), or ``None``."""
    span = trace.get_current_span(context)
    try:
        return _TRACEPARENTS[span]
    except (KeyError, TypeError):  # not yet written, or a span type without weak references
        pass
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)  # the same span: context's, or current
    traceparent = carrier[TRACEPARENT]
    with suppress(TypeError):
        _TRACEPARENTS[span] = traceparent  # a span's context never changes
    return traceparent


def with_traceparent(event: CloudEvent) -> CloudEvent:
    """``event`` carrying the current span's ``traceparent`` if it has none (else itself).

    Cheap when there is no current span (tracing off): one context lookup.
    """
    if event.traceparent is not None:
        return event
    traceparent = current_traceparent()
    if traceparent is None:
        return event
    return event.model_copy(update={TRACEPARENT: traceparent})


def goal_trace_id(gid: str) -> int:
    """The trace id of goal ``gid``: the GID's own 128 bits when it is a ULID, else a hash.

    So ``shoal trace`` and a tracing backend agree on a goal's trace without any lookup.
    """
    try:
        return int(ULID.from_str(gid))
    except ValueError:
        return int.from_bytes(hashlib.sha256(b"shoal.goal\0" + gid.encode()).digest()[:16])


def goal_context(gid: str, *, sampled: bool = True) -> Context:
    """A remote parent standing for goal ``gid`` itself, for work that arrives untraced.

    A goal submitted without trace context (``shoal goal submit`` with tracing off, a plain
    NATS client) would otherwise start a new trace on every delivery; parented here, every
    attempt and every task of the goal lands in one trace, whose id follows from the GID.
    The parent span is never exported: backends show the goal's spans under a missing root.
    ``sampled`` is the goal's sampling decision (see ``shoal.bus.telemetry.goal_sampled``):
    the SDK's parent-based samplers follow it, so a goal is recorded whole or not at all.
    """
    span_id = int.from_bytes(hashlib.sha256(b"shoal.goal.span\0" + gid.encode()).digest()[:8])
    span_context = SpanContext(
        trace_id=goal_trace_id(gid),
        span_id=span_id or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def work_context(
    headers: Mapping[str, str] | None,
    traceparent: str | None,
    gid: str | None,
    goal_sampled: Callable[[str], bool] | None = None,
) -> Context | None:
    """The parent of the work a message carries: its trace context, else its goal's.

    ``goal_sampled`` decides a goal's sampling when the message carries no trace context
    (default: sampled). ``None`` (a new trace) only for untraced work outside any goal.
    """
    context = extract_context(headers, traceparent)
    if context is None and gid:
        context = goal_context(gid, sampled=goal_sampled(gid) if goal_sampled else True)
    return context
