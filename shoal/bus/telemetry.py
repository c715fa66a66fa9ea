"""OpenTelemetry for a shoal process: providers, exporters, and trace context on the wire.

A process calls :func:`setup_telemetry` once and uses the returned :class:`Telemetry` as a
context manager (its exit flushes and shuts the exporters down). Where spans and metrics go
follows the standard ``OTEL_*`` variables, read through :class:`ShoalSettings`:

- ``OTEL_SDK_DISABLED=true``: nothing is recorded and no trace context is sent;
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the ``_TRACES_``/``_METRICS_`` variants) set: OTLP, over
  gRPC or HTTP per ``OTEL_EXPORTER_OTLP_PROTOCOL`` (default ``http/protobuf``, the spec's);
- otherwise JSON lines under ``<data_dir>/traces/`` (``spans.jsonl``, ``metrics.jsonl``).

How trace context crosses NATS is :mod:`shoal.bus.tracecontext` (API only, cheap to import).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from shoal.bus.histograms import Histograms, NoHistograms, make_histograms
from shoal.bus.settings import ShoalSettings
from shoal.bus.spanfile import JsonLinesMetricExporter, JsonLinesSpanExporter
from shoal.bus.tracecontext import goal_trace_id
from shoal.schemas import new_id

__all__ = [
    "INSTRUMENTATION_SCOPE",
    "Telemetry",
    "goal_sampled",
    "metrics_path",
    "setup_telemetry",
    "spans_path",
]

log = logging.getLogger(__name__)

INSTRUMENTATION_SCOPE = "shoal"


def spans_path(settings: ShoalSettings) -> Path:
    """Where the local span file lives: ``<data_dir>/traces/spans.jsonl``."""
    return settings.data_dir / "traces" / "spans.jsonl"


def metrics_path(settings: ShoalSettings) -> Path:
    """Where the local metrics file lives: ``<data_dir>/traces/metrics.jsonl``."""
    return settings.data_dir / "traces" / "metrics.jsonl"


@dataclass
class Telemetry:
    """A process's tracer and meter, and the providers behind them (``None`` when disabled).

    Code that records spans takes a ``Telemetry`` (no global lookups), so tests and benches
    can run several side by side; :func:`setup_telemetry` also installs the first one as the
    OpenTelemetry global, for third-party instrumentation.
    """

    service_name: str
    tracer: trace.Tracer
    meter: metrics.Meter
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    record_content: bool = False
    exporter: str = "none"
    histograms: Histograms = field(default_factory=NoHistograms)
    """The GenAI histograms' aggregation (:mod:`shoal.bus.histograms`), bound to the readers."""

    @property
    def enabled(self) -> bool:
        """True when spans are recorded (the SDK is on)."""
        return self.tracer_provider is not None

    @classmethod
    def disabled(cls, service_name: str = "shoal") -> Telemetry:
        """A telemetry that records nothing (the API's no-op tracer and meter)."""
        return cls(service_name, trace.NoOpTracer(), metrics.NoOpMeter(INSTRUMENTATION_SCOPE))

    def goal_sampled(self, gid: str) -> bool:
        """Whether goal ``gid`` is traced, by this process's sampler (see :func:`goal_sampled`)."""
        if self.tracer_provider is None:
            return True  # nothing is recorded here; the flag is for the processes that trace
        return goal_sampled(gid, self.tracer_provider.sampler)

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Export everything finished so far; True if every exporter confirmed in time."""
        ok = True
        if self.tracer_provider is not None:
            ok = self.tracer_provider.force_flush(timeout_millis) and ok
        if self.meter_provider is not None:
            ok = self.meter_provider.force_flush(timeout_millis) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop the exporters (idempotent); spans started later are dropped."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def goal_sampled(gid: str, sampler: Sampler | None = None) -> bool:
    """Whether goal ``gid`` is traced: ``sampler``'s decision for the goal's trace id as a root
    span; by default the sampler the standard ``OTEL_TRACES_SAMPLER`` variables configure.

    Made where a goal's trace context is first written (:func:`shoal.ops.goals.build_goal`, or
    an agent given untraced goal work) and carried in the context's sampled flag, which the
    parent-based samplers of every other process follow. With the default sampler every goal
    is traced; with ``parentbased_traceidratio`` the decision depends on the trace id alone,
    so processes sharing the setting agree on each goal even without its context.
    """
    if sampler is None:
        sampler = TracerProvider(shutdown_on_exit=False).sampler  # reads OTEL_TRACES_SAMPLER*
    decision = sampler.should_sample(None, goal_trace_id(gid), "goal").decision
    return decision is Decision.RECORD_AND_SAMPLE


def setup_telemetry(
    settings: ShoalSettings,
    service_name: str,
    *,
    instance_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    install_global: bool = True,
) -> Telemetry:
    """Build the tracer and meter of one process (``shoal-agent``, ``shoal-core``, …).

    ``span_exporter``/``metric_reader`` replace the configured exporters (tests pass the
    SDK's in-memory ones); a given exporter is called synchronously as each span ends,
    configured ones in the SDK's background batch thread.
    """
    if settings.otel_sdk_disabled:
        return Telemetry.disabled(service_name)
    resource = Resource.create(
        {
            "service.name": settings.otel_service_name or service_name,
            "service.namespace": "shoal",
            "service.instance.id": instance_id or new_id(),
            **(attributes or {}),
        }
    )
    processor: SpanProcessor | None
    if span_exporter is not None:
        processor, exporter_name = SimpleSpanProcessor(span_exporter), "custom"
    elif settings.otel_traces_exporter == "none":
        processor, exporter_name = None, "none"  # OTEL_TRACES_EXPORTER=none
    else:
        configured, exporter_name = _span_exporter(settings)
        processor = BatchSpanProcessor(configured)
    tracer_provider = TracerProvider(resource=resource)
    if processor is not None:
        tracer_provider.add_span_processor(processor)
    readers: list[MetricReader] = []
    if metric_reader is not None:
        readers.append(metric_reader)
    elif settings.otel_metrics_exporter != "none":  # OTEL_METRICS_EXPORTER=none: no reader
        readers.append(PeriodicExportingMetricReader(_metric_exporter(settings)))
    # No exemplars: sampling one per measurement costs more than the rest of a record, and
    # the spans already carry what an exemplar would point to.
    meter_provider = MeterProvider(
        metric_readers=readers, resource=resource, exemplar_filter=AlwaysOffExemplarFilter()
    )
    if install_global:
        _install_global(tracer_provider, meter_provider)
    meter = meter_provider.get_meter(INSTRUMENTATION_SCOPE)
    # The GenAI histograms are aggregated in Python and merged into each reader's collection
    # (a synchronous SDK record costs ~15 µs; three per model call).
    scope = InstrumentationScope(INSTRUMENTATION_SCOPE)
    return Telemetry(
        service_name=service_name,
        tracer=tracer_provider.get_tracer(INSTRUMENTATION_SCOPE),
        meter=meter,
        histograms=make_histograms(meter_provider, readers, meter, resource, scope),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        record_content=settings.trace_content,
        exporter=exporter_name,
    )


def _signal_endpoint(settings: ShoalSettings, signal: str) -> str | None:
    """The OTLP endpoint of one signal, per the spec's rules for the two variables."""
    specific = (
        settings.otel_traces_endpoint if signal == "traces" else settings.otel_metrics_endpoint
    )
    if specific:
        return specific  # signal-specific: used as given
    if not settings.otel_endpoint:
        return None
    if settings.otel_protocol == "grpc":
        return settings.otel_endpoint
    return settings.otel_endpoint.rstrip("/") + f"/v1/{signal}"  # the base URL's signal path


def _span_exporter(settings: ShoalSettings) -> tuple[SpanExporter, str]:
    endpoint = _signal_endpoint(settings, "traces")
    if endpoint is None:
        return JsonLinesSpanExporter(spans_path(settings)), "jsonl"
    # Imported on demand: the gRPC stack costs ~0.3 s to import and most runs never need it.
    if settings.otel_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint=endpoint), "otlp/grpc"
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint), "otlp/http"


class ReportOnce(logging.Filter):
    """Let an exporter's failure through once per kind (status code, reason), not per batch.

    A collector that takes spans but not metrics answers every metrics batch with HTTP 405;
    the SDK would log that every export interval, forever.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = str(record.msg) + repr(record.args[:2] if isinstance(record.args, tuple) else ())
        if key in self.seen:
            return False
        self.seen.add(key)
        record.msg = str(record.msg) + " (reported once; later failures like it are not)"
        return True


_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
)


def _report_once() -> None:
    for name in _EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ReportOnce) for f in logger.filters):
            logger.addFilter(ReportOnce())


def _metric_exporter(settings: ShoalSettings) -> MetricExporter:
    endpoint = _signal_endpoint(settings, "metrics")
    if endpoint is None:
        return JsonLinesMetricExporter(metrics_path(settings))
    _report_once()
    if settings.otel_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=endpoint)


def _install_global(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
    # The API allows one global provider per process; a second setup in the same process
    # (tests, an embedded run) keeps the first global and uses its own providers directly.
    # Both are installed together, so the tracer provider's state stands for both.
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
