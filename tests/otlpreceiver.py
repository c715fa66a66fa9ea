"""A local OTLP receiver for tests: OTLP/HTTP (protobuf) and OTLP/gRPC, spans and metrics.

It decodes the real ``ExportTraceServiceRequest``/``ExportMetricsServiceRequest`` protobufs
(gzip-compressed or not) with ``opentelemetry.proto`` and keeps what arrived: tests export to
it directly, and it is the onward sink of the real collector in :mod:`tests.collector`.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs in the dev dependencies
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}
"""OTLP's ``Status.StatusCode`` numbers, named as the SDK (and the local span file) names them."""


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _histogram_point(unit: str, temporality: int, p: Any) -> dict[str, Any]:
    return {
        "unit": unit,
        "temporality": temporality,  # 1 delta, 2 cumulative (OTLP's AggregationTemporality)
        "attributes": _attrs(p.attributes),
        "count": p.count,
        "sum": p.sum,
        "bucket_counts": list(p.bucket_counts),
        "explicit_bounds": list(p.explicit_bounds),
        "min": p.min,
        "max": p.max,
        "start_time_unix_nano": p.start_time_unix_nano,
    }


@dataclass
class Received:
    """What the receiver got: spans as dicts, metric names, histogram points, request paths."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    metric_names: set[str] = field(default_factory=set)
    histograms: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Each histogram's points as of the last request that carried it (exports are cumulative)."""
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_traces(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for rs in request.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(
                            {
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_span_id": s.parent_span_id.hex() or None,
                                "name": s.name,
                                "attributes": _attrs(s.attributes),
                                "status": {"code": STATUS_CODES.get(s.status.code, "UNSET")},
                                "resource": resource,
                            }
                        )

    def add_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self.lock:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    self.metric_names.update(m.name for m in sm.metrics)
                    for m in sm.metrics:
                        if m.WhichOneof("data") == "histogram":
                            self.histograms[m.name] = [
                                _histogram_point(m.unit, m.histogram.aggregation_temporality, p)
                                for p in m.histogram.data_points
                            ]

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.02)
        return False


class OtlpHttpReceiver:
    """``POST /v1/traces`` and ``/v1/metrics`` on 127.0.0.1, a free port."""

    def __init__(self) -> None:
        self.received = Received()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":  # collectors compress
                    body = gzip.decompress(body)
                received.paths.append(self.path)
                if self.path == "/v1/traces":
                    received.add_traces(
                        trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    )
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    received.add_metrics(request)
                    reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OtlpHttpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class OtlpGrpcReceiver:
    """The OTLP trace and metrics gRPC services on 127.0.0.1, a free port."""

    def __init__(self) -> None:
        self.received = Received()
        received = self.received

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                received.add_traces(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                received.add_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add_traces = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_metrics = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        add_traces(Traces(), self.server)  # type: ignore[no-untyped-call]
        add_metrics(Metrics(), self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpGrpcReceiver:
        self.server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.stop(grace=None)
