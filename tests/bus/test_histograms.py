"""The GenAI histograms aggregated in Python give exactly what the SDK's own would.

Each test records the same values into an SDK histogram and into ours, each on its own
MeterProvider, and compares what the readers (or a real OTLP receiver) got.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    InMemoryMetricReader,
    MetricsData,
)
from opentelemetry.sdk.metrics.export import (
    Histogram as HistogramData,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from shoal.bus.genai import TOKEN_BUCKETS, GenAI, session_attributes
from shoal.bus.histograms import (
    CARDINALITY_LIMIT,
    HistogramRecorder,
    NoHistograms,
    PythonHistograms,
    SdkHistograms,
    make_histograms,
)
from shoal.bus.telemetry import INSTRUMENTATION_SCOPE, Telemetry, setup_telemetry
from tests.bus.test_telemetry import otel_settings
from tests.otlpreceiver import OtlpHttpReceiver

pytestmark = pytest.mark.timeout(60)

NAME, UNIT, DESCRIPTION = "gen_ai.client.token.usage", "{token}", "Number of tokens used."
A = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m1", "shoal.fleet": "docs"}
A_REORDERED = {"shoal.fleet": "docs", "gen_ai.request.model": "m1", "gen_ai.operation.name": "chat"}
B = {**A, "gen_ai.token.type": "output"}
C = {**A, "error.type": "Timeout", "shoal.final": True}


@dataclasses.dataclass
class Pair:
    """One SDK histogram and one of ours, each with its own provider and reader."""

    sdk: HistogramRecorder
    sdk_reader: InMemoryMetricReader
    ours: HistogramRecorder
    our_reader: InMemoryMetricReader

    def record(self, value: float, attributes: dict[str, Any]) -> None:
        self.sdk.record(value, attributes)
        self.ours.record(value, attributes)

    def collect(self) -> tuple[MetricsData | None, MetricsData | None]:
        return self.sdk_reader.get_metrics_data(), self.our_reader.get_metrics_data()


def _reader(temporality: AggregationTemporality) -> InMemoryMetricReader:
    return InMemoryMetricReader(preferred_temporality={Histogram: temporality})


def _provider(reader: InMemoryMetricReader) -> MeterProvider:
    resource = Resource.create({"service.name": "shoal-test"})
    return MeterProvider(
        metric_readers=[reader], resource=resource, exemplar_filter=AlwaysOffExemplarFilter()
    )


def make_pair(temporality: AggregationTemporality) -> Pair:
    sdk_reader, our_reader = _reader(temporality), _reader(temporality)
    sdk_provider, our_provider = _provider(sdk_reader), _provider(our_reader)
    sdk = SdkHistograms(sdk_provider.get_meter(INSTRUMENTATION_SCOPE))
    ours = make_histograms(
        our_provider,
        [our_reader],
        our_provider.get_meter(INSTRUMENTATION_SCOPE),
        our_provider._sdk_config.resource,
        InstrumentationScope(INSTRUMENTATION_SCOPE),
    )
    assert isinstance(ours, PythonHistograms)
    made = [
        h.histogram(NAME, unit=UNIT, description=DESCRIPTION, boundaries=TOKEN_BUCKETS)
        for h in (sdk, ours)
    ]
    return Pair(made[0], sdk_reader, made[1], our_reader)


def shape(data: MetricsData | None) -> list[dict[str, Any]]:
    """Every histogram metric with its resource, scope and points, timestamps left out."""
    out: list[dict[str, Any]] = []
    for rm in data.resource_metrics if data is not None else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                assert isinstance(m.data, HistogramData)
                points = [
                    {
                        k: v
                        for k, v in dataclasses.asdict(p).items()
                        if k not in ("start_time_unix_nano", "time_unix_nano")
                    }
                    for p in m.data.data_points
                ]
                out.append(
                    {
                        "resource": dict(rm.resource.attributes),
                        "scope": sm.scope,
                        "name": m.name,
                        "unit": m.unit,
                        "description": m.description,
                        "temporality": m.data.aggregation_temporality,
                        "points": sorted(points, key=lambda p: sorted(p["attributes"].items())),
                    }
                )
    return out


def point(data: MetricsData | None, attributes: dict[str, Any]) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        p for p in shape(data)[0]["points"] if p["attributes"] == attributes
    ]
    [one] = found
    return one


def times(data: MetricsData | None) -> list[tuple[int, int]]:
    assert data is not None
    [metric] = data.resource_metrics[0].scope_metrics[0].metrics
    return [(p.start_time_unix_nano, p.time_unix_nano) for p in metric.data.data_points]


@pytest.mark.parametrize(
    "temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA]
)
def test_points_equal_the_sdks_over_two_collections(temporality: AggregationTemporality) -> None:
    pair = make_pair(temporality)
    # bucket bounds exactly (they belong to the lower bucket), zero, floats, the last bucket,
    # and values the SDK drops (negative, not finite)
    for value in (0, 1, 4, 4.5, 16, 98, 67108864, 67108865, -1, math.inf, math.nan):
        pair.record(value, A)
    pair.record(7, A_REORDERED)  # the same attribute set, another order: the same point
    for value in (85, 16, 1):
        pair.record(value, B)
    pair.record(3, C)
    first_sdk, first_ours = pair.collect()
    assert shape(first_ours) == shape(first_sdk)
    a, b, c = (point(first_ours, attrs) for attrs in (A, B, C))
    assert (a["count"], a["sum"], a["min"], a["max"]) == (9, 134217859.5, 0, 67108865)
    assert a["bucket_counts"] == (2, 1, 3, 0, 1) + (0,) * 8 + (1, 1)
    assert (b["count"], b["sum"], b["bucket_counts"][:5]) == (3, 102, (1, 0, 1, 0, 1))
    assert (c["count"], c["sum"], c["min"], c["max"]) == (1, 3, 3, 3)

    pair.record(5, B)  # only B moves in the second interval
    second_sdk, second_ours = pair.collect()
    assert shape(second_ours) == shape(second_sdk)
    if temporality is AggregationTemporality.DELTA:
        [only] = shape(second_ours)[0]["points"]
        assert (only["attributes"], only["count"], only["sum"]) == (B, 1, 5)
        # a delta point starts where the previous collection ended, as the SDK's do
        assert times(second_ours)[0][0] == times(first_ours)[0][1]
    else:
        assert [point(second_ours, attrs)["count"] for attrs in (A, B, C)] == [9, 4, 1]
        assert times(second_ours) == [
            (start, times(second_ours)[0][1]) for start, _ in times(first_ours)
        ]


def test_attribute_sets_past_the_cardinality_limit_overflow_as_the_sdks_do() -> None:
    pair = make_pair(AggregationTemporality.CUMULATIVE)
    for i in range(CARDINALITY_LIMIT + 3):
        pair.record(i % 50, {**A, "shoal.fleet": f"f{i}"})
    pair.record(2, {**A, "shoal.fleet": "f0"})  # an existing set keeps its own point
    sdk, ours = pair.collect()
    assert shape(ours) == shape(sdk)
    points = shape(ours)[0]["points"]
    assert len(points) == CARDINALITY_LIMIT + 1
    [overflow] = [p for p in points if p["attributes"] == {"otel.metric.overflow": True}]
    assert overflow["count"] == 3


def test_a_reader_wanting_exponential_histograms_gets_the_sdks(tmp_path: Path) -> None:
    reader = InMemoryMetricReader(
        preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()}
    )
    settings = otel_settings(tmp_path)
    with setup_telemetry(
        settings, "shoal-test", metric_reader=reader, install_global=False
    ) as telemetry:
        assert isinstance(telemetry.histograms, SdkHistograms)
        with GenAI(telemetry).chat("m1", session_attributes(iid="I1"), provider="p") as chat:
            chat.response(model="m1", input_tokens=3, output_tokens=2)
        data = reader.get_metrics_data()
    assert data is not None
    [usage] = [m for m in data.resource_metrics[0].scope_metrics[0].metrics if m.name == NAME]
    assert isinstance(usage.data, ExponentialHistogram)
    assert sorted(p.sum for p in usage.data.data_points) == [2, 3]


def test_without_a_metric_reader_histograms_record_nothing(tmp_path: Path) -> None:
    settings = otel_settings(tmp_path, otel_metrics_exporter="none")
    with setup_telemetry(settings, "shoal-test", install_global=False) as telemetry:
        assert isinstance(telemetry.histograms, NoHistograms)
    assert isinstance(Telemetry.disabled().histograms, NoHistograms)


def test_two_genai_of_one_process_share_one_histogram(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    with setup_telemetry(
        otel_settings(tmp_path), "shoal-test", metric_reader=reader, install_global=False
    ) as telemetry:
        for genai in (GenAI(telemetry), GenAI(telemetry)):  # the runtime's and a gateway's
            with genai.chat("m1", session_attributes(iid="I1"), provider="p") as chat:
                chat.response(model="m1", input_tokens=10, output_tokens=1)
        data = reader.get_metrics_data()
    assert data is not None
    [usage] = [m for m in data.resource_metrics[0].scope_metrics[0].metrics if m.name == NAME]
    assert isinstance(usage.data, HistogramData)
    assert sorted((p.count, p.sum) for p in usage.data.data_points) == [(2, 2), (2, 20)]


CALLS = ((98, 85), (76, 16), (4, 1))


def run_calls(telemetry: Telemetry) -> None:
    genai = GenAI(telemetry)
    session = session_attributes(iid="I1", fleet="docs", agent="summarizer", gid="G1")
    with genai.invoke_agent("summarizer", session):
        for input_tokens, output_tokens in CALLS:
            with genai.chat("m1", session, provider="openai") as chat:
                chat.response(
                    model="m1-2025", input_tokens=input_tokens, output_tokens=output_tokens
                )
        with pytest.raises(TimeoutError), genai.chat("m1", session, provider="openai"):
            raise TimeoutError


@pytest.fixture
def receivers() -> Iterator[tuple[OtlpHttpReceiver, OtlpHttpReceiver]]:
    with OtlpHttpReceiver() as ours, OtlpHttpReceiver() as sdk:
        yield ours, sdk


def test_genai_metric_values_at_an_otlp_receiver_are_the_sdks(
    tmp_path: Path, receivers: tuple[OtlpHttpReceiver, OtlpHttpReceiver]
) -> None:
    ours, sdk = receivers
    duration = "gen_ai.client.operation.duration"
    for receiver, sdk_histograms in ((ours, False), (sdk, True)):
        settings = otel_settings(tmp_path / str(sdk_histograms), otel_endpoint=receiver.endpoint)
        with setup_telemetry(settings, "shoal-test", install_global=False) as telemetry:
            assert isinstance(telemetry.histograms, PythonHistograms)
            if sdk_histograms:  # the SDK's synchronous instruments, as before this module
                telemetry.histograms = SdkHistograms(telemetry.meter)
            run_calls(telemetry)
        assert receiver.received.wait_for(lambda r: {NAME, duration} <= set(r.histograms))

    def by_attrs(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(points, key=lambda p: sorted(p["attributes"].items()))

    got, want = (by_attrs(r.received.histograms[NAME]) for r in (ours, sdk))
    for p in got + want:
        del p["start_time_unix_nano"]
    assert got == want
    base = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "m1",
        "gen_ai.response.model": "m1-2025",
        "shoal.fleet": "docs",
        "gen_ai.agent.name": "summarizer",
    }
    bounds = [float(b) for b in TOKEN_BUCKETS]

    def tokens(kind: str, total: float, buckets: list[int], low: float, high: float) -> Any:
        return {
            "unit": "{token}",
            "temporality": 2,  # cumulative
            "attributes": {**base, "gen_ai.token.type": kind},
            "count": 3,
            "sum": total,
            "bucket_counts": buckets + [0] * 10,
            "explicit_bounds": bounds,
            "min": low,
            "max": high,
        }

    assert got == [
        tokens("input", 178.0, [0, 1, 0, 0, 2], 4.0, 98.0),
        tokens("output", 102.0, [1, 0, 1, 0, 1], 1.0, 85.0),
    ]
    # durations are timings: the same points, counts and attributes, each count its buckets'
    got_d, want_d = (by_attrs(r.received.histograms[duration]) for r in (ours, sdk))
    ok = {k: v for k, v in base.items() if k != "gen_ai.response.model"}
    failed = {**ok, "error.type": "TimeoutError"}
    assert [(p["attributes"], p["count"], p["unit"]) for p in got_d] == [
        (failed, 1, "s"),
        ({**base}, 3, "s"),
    ]
    assert [(p["attributes"], p["count"]) for p in got_d] == [
        (p["attributes"], p["count"]) for p in want_d
    ]
    assert all(sum(p["bucket_counts"]) == p["count"] for p in got_d)
