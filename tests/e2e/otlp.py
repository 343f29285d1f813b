"""An OTLP/HTTP receiver for end-to-end tests: child processes export spans and metrics to it.

The in-memory exporter of tests that span processes: :func:`running_receiver`
serves ``/v1/traces`` and ``/v1/metrics`` (protobuf) on a free local port and
keeps everything it is sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass(frozen=True)
class Span:
    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, str]


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP (protobuf) endpoint for traces and metrics that keeps what it receives."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Span] = []
        # (service, metric name, sorted attribute pairs) -> latest value (counters are cumulative)
        self.points: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        self.lock = threading.Lock()

    def keep_metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest.FromString(body)
        with self.lock:
            for resource_metrics in request.resource_metrics:
                service = next((a.value.string_value for a in resource_metrics.resource.attributes
                                if a.key == "service.name"), "")
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        points = metric.sum.data_points or metric.gauge.data_points
                        for point in points:
                            attrs = tuple(sorted((a.key, a.value.string_value) for a in point.attributes))
                            value = point.as_int if point.HasField("as_int") else point.as_double
                            self.points[(service, metric.name, attrs)] = value

    def counted(self, service: str, stage: str, outcome: str) -> float:
        key = (service, "touchpoint.events", (("touchpoint.outcome", outcome), ("touchpoint.stage", stage)))
        with self.lock:
            return self.points.get(key, 0)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"

    def keep(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        received = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                received += [Span(s.name, service, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                  {a.key: str(a.value) for a in s.attributes})
                             for s in scope_spans.spans]
        with self.lock:
            self.spans += received


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/v1/metrics"):
            self.server.keep_metrics(body)
        else:
            self.server.keep(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A :class:`Receiver` serving in a thread until the block ends."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
