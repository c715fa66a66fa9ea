"""Explicit-bucket histograms aggregated in Python and handed to the SDK's readers.

A synchronous SDK ``Histogram.record`` costs ~15 µs with the seven attributes of a GenAI
metric (a ``Measurement``, a context lookup, a copy and a hash of the attribute set, two
locks, the exemplar hook), and every model call makes three. Here a record is a lock, a
frozenset of the attributes and three updates to a small list (~1.5 µs), and the points
reach the exporter inside the SDK's own collection: each reader's collect callback is wrapped
so that what it returns carries these metrics beside the SDK's, in the same resource and
scope, as the SDK would have built them (the same ``HistogramDataPoint`` fields: counts,
sum, bucket counts, bounds, min, max, start and end times, cumulative or delta per the
reader's preference, the SDK's cardinality limit and overflow point).

A reader that asks for another histogram aggregation (for example
``base2_exponential_bucket_histogram``, or buckets of its own) gets the SDK's instruments instead
(:class:`SdkHistograms`): the fast path only stands in for what the SDK would do by default.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from time import time_ns
from typing import Any, Protocol

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics._internal.instrument import _Histogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import DefaultAggregation, ExplicitBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = [
    "CARDINALITY_LIMIT",
    "HistogramRecorder",
    "Histograms",
    "NoHistograms",
    "PythonHistograms",
    "SdkHistograms",
    "python_histograms_fit",
]

AttrValue = str | int | float | bool
CARDINALITY_LIMIT = 2000
"""Distinct attribute sets per histogram before the overflow point (the SDK's default)."""
OVERFLOW: frozenset[tuple[str, AttrValue]] = frozenset({("otel.metric.overflow", True)})


class HistogramRecorder(Protocol):
    """What the GenAI code records into: one histogram."""

    def record(self, value: float, attributes: Mapping[str, AttrValue], /) -> None: ...


class Histograms(Protocol):
    """Makes the histograms of one meter provider (the same name gives the same one)."""

    def histogram(
        self, name: str, *, unit: str, description: str, boundaries: Sequence[float]
    ) -> HistogramRecorder: ...


class _Nothing:
    def record(self, value: float, attributes: Mapping[str, AttrValue]) -> None:
        return None


class NoHistograms:
    """Histograms that record nothing (telemetry off, or no metric reader)."""

    def histogram(
        self, name: str, *, unit: str, description: str, boundaries: Sequence[float]
    ) -> HistogramRecorder:
        return _Nothing()


@dataclass
class SdkHistograms:
    """The SDK's synchronous histograms (the fallback when a reader wants another aggregation)."""

    meter: Meter

    def histogram(
        self, name: str, *, unit: str, description: str, boundaries: Sequence[float]
    ) -> HistogramRecorder:
        return self.meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=boundaries
        )


class _Point:
    """One attribute set's aggregate: bucket counts, sum, min, max, start time."""

    __slots__ = ("attributes", "counts", "max", "min", "start", "sum")

    def __init__(self, attributes: dict[str, AttrValue], buckets: int, start: int) -> None:
        self.attributes = attributes
        self.counts = [0] * buckets
        self.sum: float = 0
        self.min = math.inf
        self.max = -math.inf
        self.start = start

    def merge(self, other: _Point) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)


@dataclass
class _ReaderState:
    """What one reader has been given: everything (cumulative) or since its last collect."""

    delta: bool
    points: dict[str, dict[frozenset[tuple[str, AttrValue]], _Point]] = field(default_factory=dict)
    last_collect: int | None = None


class PythonHistogram:
    """One histogram aggregated in Python; points are drained into readers at collection."""

    def __init__(
        self,
        owner: PythonHistograms,
        name: str,
        unit: str,
        description: str,
        bounds: Sequence[float],
    ) -> None:
        self.owner = owner
        self.name, self.unit, self.description = name, unit, description
        self.bounds = tuple(bounds)
        self.live: dict[frozenset[tuple[str, AttrValue]], _Point] = {}

    def record(self, value: float, attributes: Mapping[str, AttrValue]) -> None:
        if not value >= 0 or value == math.inf:  # the SDK drops these (with a warning) too
            return
        key = frozenset(attributes.items())
        with self.owner.lock:
            point = self.live.get(key)
            if point is None:
                point = self._new_point(key, attributes)
            point.counts[bisect_left(self.bounds, value)] += 1
            point.sum += value
            if value < point.min:
                point.min = value
            if value > point.max:
                point.max = value

    def _new_point(
        self, key: frozenset[tuple[str, AttrValue]], attributes: Mapping[str, AttrValue]
    ) -> _Point:
        seen = self.owner.seen.setdefault(self.name, set())
        if key not in seen and len(seen) >= CARDINALITY_LIMIT:
            key, attributes = OVERFLOW, dict(OVERFLOW)
            existing = self.live.get(key)
            if existing is not None:
                return existing
        seen.add(key)
        point = self.live[key] = _Point(dict(attributes), len(self.bounds) + 1, time_ns())
        return point


class PythonHistograms:
    """The histograms of one meter provider, merged into each of its readers' collections."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self.resource = resource
        self.scope = scope
        self.lock = threading.Lock()
        self.histograms: dict[str, PythonHistogram] = {}
        self.readers: dict[int, _ReaderState] = {}
        self.seen: dict[str, set[frozenset[tuple[str, AttrValue]]]] = {}
        # A child forked while the collecting thread held the lock would never get it back.
        reinit = weakref.WeakMethod(self._after_fork)

        def after_in_child() -> None:
            if (method := reinit()) is not None:
                method()

        os.register_at_fork(after_in_child=after_in_child)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()

    def histogram(
        self, name: str, *, unit: str, description: str, boundaries: Sequence[float]
    ) -> HistogramRecorder:
        with self.lock:
            made = self.histograms.get(name)
            if made is None:
                made = self.histograms[name] = PythonHistogram(
                    self, name, unit, description, boundaries
                )
            return made

    def attach(self, reader: MetricReader) -> None:
        """Wrap ``reader``'s collection so that it returns these histograms too.

        Called after the :class:`MeterProvider` registered the reader (it sets the callback).
        """
        # The SDK's hook (no public one exists); its annotations disagree with its calls.
        original: Any = reader._collect
        if original is None:
            raise ValueError("the reader is not registered on a MeterProvider yet")
        temporality = reader._instrument_class_temporality[_Histogram]
        self.readers[id(reader)] = _ReaderState(delta=temporality is AggregationTemporality.DELTA)
        wrapped: Any = partial(self._collect, original)
        reader._set_collect_callback(wrapped)

    def _collect(
        self,
        original: Callable[..., MetricsData | None],
        reader: MetricReader,
        timeout_millis: float = 10_000,
    ) -> MetricsData | None:
        data = original(reader, timeout_millis=timeout_millis)
        metrics = self.collect(id(reader), time_ns())
        return _merged(data, metrics, self.resource, self.scope) if metrics else data

    def collect(self, reader: int, now: int) -> list[Metric]:
        """The metrics one reader exports now (SDK semantics for its temporality)."""
        with self.lock:
            self._drain()
            state = self.readers[reader]
            metrics = [
                Metric(
                    name=h.name,
                    description=h.description,
                    unit=h.unit,
                    data=Histogram(
                        data_points=[_data_point(p, h.bounds, now) for p in points.values()],
                        aggregation_temporality=AggregationTemporality.DELTA
                        if state.delta
                        else AggregationTemporality.CUMULATIVE,
                    ),
                )
                for h in self.histograms.values()
                if (points := state.points.get(h.name))
            ]
            if state.delta:
                state.points = {}
                state.last_collect = now
            return metrics

    def _drain(self) -> None:
        """Move what was recorded since the last collection into every reader's state."""
        for h in self.histograms.values():
            live, h.live = h.live, {}
            for state in self.readers.values():
                points = state.points.setdefault(h.name, {})
                for key, point in live.items():
                    mine = points.get(key)
                    if mine is None:
                        start = state.last_collect if state.delta and state.last_collect else None
                        mine = points[key] = _Point(
                            point.attributes, len(point.counts), start or point.start
                        )
                    mine.merge(point)


def _data_point(point: _Point, bounds: tuple[float, ...], now: int) -> HistogramDataPoint:
    return HistogramDataPoint(
        attributes=point.attributes,
        start_time_unix_nano=point.start,
        time_unix_nano=now,
        count=sum(point.counts),
        sum=point.sum,
        bucket_counts=tuple(point.counts),
        explicit_bounds=bounds,
        min=point.min,
        max=point.max,
    )


def _merged(
    data: MetricsData | None, metrics: list[Metric], resource: Resource, scope: InstrumentationScope
) -> MetricsData:
    """``data`` with ``metrics`` added to ``scope`` of its resource (both made if absent)."""
    if data is None or not data.resource_metrics:
        mine = ScopeMetrics(scope=scope, metrics=metrics, schema_url=scope.schema_url or "")
        rm = ResourceMetrics(
            resource=resource, scope_metrics=[mine], schema_url=resource.schema_url
        )
        return MetricsData(resource_metrics=[rm])
    first, *rest = data.resource_metrics
    scopes: list[ScopeMetrics] = []
    added = False
    for sm in first.scope_metrics:
        if sm.scope == scope and not added:
            sm, added = replace(sm, metrics=[*sm.metrics, *metrics]), True
        scopes.append(sm)
    if not added:
        scopes.append(ScopeMetrics(scope=scope, metrics=metrics, schema_url=scope.schema_url or ""))
    return MetricsData(resource_metrics=[replace(first, scope_metrics=scopes), *rest])


def python_histograms_fit(readers: Sequence[MetricReader]) -> bool:
    """Whether every reader takes the explicit-bucket aggregation with the instrument's own
    (advisory) buckets, min and max: the default, and what the OTLP exporters ask for unless
    ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION`` says otherwise."""
    for reader in readers:
        wanted = reader._instrument_class_aggregation[_Histogram]
        if isinstance(wanted, DefaultAggregation):
            continue
        if not isinstance(wanted, ExplicitBucketHistogramAggregation):
            return False
        if wanted._boundaries is not None or not wanted._record_min_max:
            return False
    return True


def make_histograms(
    provider: MeterProvider | None,
    readers: Sequence[MetricReader],
    meter: Meter,
    resource: Resource,
    scope: InstrumentationScope,
) -> Histograms:
    """The histograms for a provider and its readers: ours, the SDK's, or none."""
    if provider is None or not readers:
        return NoHistograms()
    if not python_histograms_fit(readers):
        return SdkHistograms(meter)
    made = PythonHistograms(resource, scope)
    for reader in readers:
        made.attach(reader)
    return made
