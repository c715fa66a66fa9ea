"""The local trace store: spans and metrics as JSON lines under ``<data_dir>/traces/``.

When no OTLP endpoint is configured, every shoal process appends its finished spans to
``spans.jsonl`` (one JSON object per span) and its metrics to ``metrics.jsonl``; ``shoal
trace`` reads them back. Several processes append to the same file: each export is a single
``write`` on a descriptor opened with ``O_APPEND``, so lines from different processes never
interleave (the kernel positions each append atomically on a local filesystem).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from pydantic_core import to_json

__all__ = [
    "JsonLinesMetricExporter",
    "JsonLinesSpanExporter",
    "SpanRecord",
    "read_spans",
    "session_trace",
    "span_to_json",
]


class _Appender:
    """One ``O_APPEND`` descriptor, opened lazily, written one whole batch at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def append(self, lines: Sequence[bytes]) -> None:
        if not lines:
            return
        data = b"\n".join(lines) + b"\n"
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (disk full, signal): finish it
                written += os.write(self._fd, data[written:])

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _json(value: Any) -> bytes:
    # pydantic-core's serializer: ~5x faster than json.dumps on these small dicts (the export
    # thread shares the GIL with the agents); tuples become arrays, anything odd a string.
    return to_json(value, fallback=str)


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    # A span's attributes are a read-only proxy of the SDK's BoundedAttributes, whose Python
    # iteration dict() would walk key by key; copy() is the underlying dict's C copy.
    return dict(attributes.copy()) if attributes else {}  # type: ignore[attr-defined]


def _span_fields(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.context
    parent = span.parent
    status = span.status
    scope = span.instrumentation_scope
    assert ctx is not None
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": {"code": status.status_code.name, "description": status.description},
        "attributes": _plain(span.attributes),
        "events": [
            {"name": e.name, "time_unix_nano": e.timestamp, "attributes": _plain(e.attributes)}
            for e in span.events
        ],
        "scope": scope.name if scope else None,
    }


def span_to_json(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the JSON object written to ``spans.jsonl``."""
    fields = {**_span_fields(span), "resource": dict(span.resource.attributes)}
    return dict(json.loads(_json(fields)))


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a JSON-lines file, one object per span (see
    :func:`span_to_json`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = _Appender(path)
        self._resource: tuple[int, bytes] = (0, b"")

    def _resource_json(self, resource: Resource) -> bytes:
        # Every span of a process has the same resource: serialize it once.
        if self._resource[0] != id(resource):
            self._resource = (id(resource), _json(dict(resource.attributes)))
        return self._resource[1]

    def _line(self, span: ReadableSpan) -> bytes:
        body = _json(_span_fields(span))
        return body[:-1] + b',"resource":' + self._resource_json(span.resource) + b"}"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self._out.append([self._line(s) for s in spans])
        except OSError:
            # The SDK logs a failed export; the spans of this batch are lost, not the process.
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._out.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export is written through


class JsonLinesMetricExporter(MetricExporter):
    """Appends each collection to a JSON-lines file, one object per metric."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._out = _Appender(path)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        lines = []
        for rm in metrics_data.resource_metrics:
            resource = dict(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    line = {
                        "name": metric.name,
                        "unit": metric.unit,
                        "description": metric.description,
                        "scope": sm.scope.name,
                        "resource": resource,
                        "data": json.loads(metric.data.to_json()),
                    }
                    lines.append(_json(line))
        try:
            self._out.append(lines)
        except OSError:
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._out.close()


@dataclass
class SpanRecord:
    """A span read back from ``spans.jsonl``, with its children once a tree is built."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start: int
    end: int
    status: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)
    children: list[SpanRecord] = field(default_factory=list, repr=False)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SpanRecord:
        return cls(
            trace_id=obj["trace_id"],
            span_id=obj["span_id"],
            parent_span_id=obj.get("parent_span_id"),
            name=obj["name"],
            kind=obj.get("kind", "INTERNAL"),
            start=int(obj.get("start_time_unix_nano") or 0),
            end=int(obj.get("end_time_unix_nano") or 0),
            status=(obj.get("status") or {}).get("code", "UNSET"),
            attributes=obj.get("attributes") or {},
            resource=obj.get("resource") or {},
            raw=obj,
        )

    @property
    def duration_ms(self) -> float:
        return max(0, self.end - self.start) / 1e6


def read_spans(path: Path, *needles: str) -> Iterator[SpanRecord]:
    """Every span in a ``spans.jsonl`` file (only lines containing one of ``needles``, if
    given: a substring test before parsing, as most lines are other sessions').

    A torn or foreign line is skipped, not fatal: the file is shared by many processes.
    """
    if not path.exists():
        return
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if needles and not any(n in line for n in needles):
                continue
            try:
                yield SpanRecord.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue


def session_trace(path: Path, key: str) -> list[SpanRecord]:
    """The span trees of one session (IID) or one goal (GID), roots first by start time.

    For an IID, the roots are the session's outermost spans (each attempt's
    ``invoke_agent``), with every descendant — delegated child sessions included. For a GID,
    the roots are the goal's traces' own roots. Empty when the file has no such span.
    """
    needle = f'"{key}"'
    traces: set[str] = set()
    by_goal = False
    for span in read_spans(path, needle):
        if span.attributes.get("gen_ai.conversation.id") == key:
            traces.add(span.trace_id)
        elif span.attributes.get("shoal.gid") == key:
            traces.add(span.trace_id)
            by_goal = True
    if not traces:
        return []
    spans = [s for s in read_spans(path, *traces) if s.trace_id in traces]
    by_id = {s.span_id: s for s in spans}
    for span in spans:
        parent = by_id.get(span.parent_span_id or "")
        if parent is not None:
            parent.children.append(span)
    for span in spans:
        span.children.sort(key=lambda s: s.start)

    def in_session(span: SpanRecord | None) -> bool:
        return span is not None and span.attributes.get("gen_ai.conversation.id") == key

    if by_goal:
        roots = [s for s in spans if s.parent_span_id not in by_id]
    else:
        roots = [
            s for s in spans if in_session(s) and not in_session(by_id.get(s.parent_span_id or ""))
        ]
    return sorted(roots, key=lambda s: s.start)
