"""Tracing is configured in one place; spans reach the processor it was given."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from touchpoint import telemetry_attrs as attrs
from touchpoint.settings import Settings
from touchpoint.telemetry import configure_tracing


def test_spans_reach_the_configured_processor() -> None:
    exporter = InMemorySpanExporter()
    provider = configure_tracing(Settings(), "touchpoint-test", SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(__name__)
    with tracer.start_as_current_span("publish") as span:
        span.set_attribute(attrs.EVENT_ID, "ev-1")
    provider.shutdown()
    [finished] = exporter.get_finished_spans()
    assert finished.name == "publish"
    assert finished.attributes == {attrs.EVENT_ID: "ev-1"}
    assert finished.resource.attributes["service.name"] == "touchpoint-test"
