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

from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shoal.schemas import CloudEvent

__all__ = ["current_traceparent", "extract_context", "inject_headers", "with_traceparent"]

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


def current_traceparent(context: Context | None = None) -> str | None:
    """The W3C ``traceparent`` of the current span (or ``context``'s), or ``None``."""
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=context)
    return carrier.get(TRACEPARENT)


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
