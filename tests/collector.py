"""A real OpenTelemetry collector for tests: Rotel, from the ``rotel`` PyPI package.

Rotel is an OTLP collector written in Rust; its wheel carries the ``rotel-agent`` binary, so
it installs with the dev dependencies and needs no download or container. A test starts one
on free ports (OTLP/HTTP and OTLP/gRPC receivers), pointed at an OTLP/HTTP sink the test
also owns (:class:`~tests.otlpreceiver.OtlpHttpReceiver`): what the sink decodes is what the
collector received from shoal and exported onwards, as it would to Jaeger or Tempo.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from shoal.ops.server import free_port, port_open
from tests.otlpreceiver import OtlpHttpReceiver, Received


def rotel_agent() -> Path:
    """The collector binary shipped in the ``rotel`` wheel (skips where it has no wheel)."""
    rotel = pytest.importorskip("rotel", reason="the rotel wheel exists for Linux and macOS")
    return Path(rotel.__file__).parent / "rotel-agent"


class Collector:
    """``with Collector() as c:`` — a running Rotel collector relaying to ``c.received``."""

    def __init__(self) -> None:
        self.sink = OtlpHttpReceiver()
        self.http_port, self.grpc_port = free_port(), free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="rotel-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_endpoint(self) -> str:
        """The OTLP/HTTP base URL (``OTEL_EXPORTER_OTLP_ENDPOINT`` for ``http/protobuf``)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        """The OTLP/gRPC endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` for ``grpc``)."""
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def received(self) -> Received:
        """What the collector has exported onwards so far."""
        return self.sink.received

    def __enter__(self) -> Collector:
        self.sink.__enter__()
        work = Path(self._dir.name)
        options = {
            "--otlp-http-endpoint": f"127.0.0.1:{self.http_port}",
            "--otlp-grpc-endpoint": f"127.0.0.1:{self.grpc_port}",
            "--exporter": "otlp",
            "--otlp-exporter-endpoint": self.sink.endpoint,
            "--otlp-exporter-protocol": "http",
            "--batch-timeout": "50ms",
            "--pid-file": str(work / "rotel.pid"),
            "--log-file": str(work / "rotel.log"),
        }
        self.proc = subprocess.Popen(
            [str(rotel_agent()), "start", *(word for pair in options.items() for word in pair)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while not (port_open(self.http_port) and port_open(self.grpc_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self._stop()
                raise RuntimeError(f"the collector did not start: {output[-2000:]}")
            time.sleep(0.02)
        return self

    def _stop(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        output = self.proc.communicate()[0].decode(errors="replace")
        self.sink.__exit__()
        self._dir.cleanup()
        return output

    def __exit__(self, *_: object) -> None:
        self._stop()
