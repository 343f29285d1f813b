"""OpenTelemetry set up in one place.

Spans wrap adapters only (connectors, agents, projection writers), never the
pure core. With tracing on and no OTLP endpoint, spans go to the console
exporter; with ``TOUCHPOINT_OTLP_ENDPOINT`` set they go there over OTLP/HTTP.
Span attribute names live in :mod:`touchpoint.telemetry_attrs` so that no
PII-bearing attribute can sneak in unnoticed.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from touchpoint.settings import Settings


def configure_tracing(settings: Settings, service: str, processor: SpanProcessor | None = None) -> TracerProvider:
    """Install a tracer provider for ``service``; returns it so callers can shut it down.

    :param processor: an explicit span processor (tests pass an in-memory one);
        otherwise chosen from the settings.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if processor is not None:
        provider.add_span_processor(processor)
    elif settings.tracing:
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracer(name: str) -> trace.Tracer:
    """The tracer for one adapter module."""
    return trace.get_tracer(name)
