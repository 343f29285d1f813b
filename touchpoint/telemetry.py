"""OpenTelemetry set up in one place.

Spans wrap adapters only (connectors, agents, projection writers), never the
pure core. With tracing on and no OTLP endpoint, spans go to the console
exporter; with ``TOUCHPOINT_OTLP_ENDPOINT`` set they go there over OTLP/HTTP.
Span attribute names live in :mod:`touchpoint.telemetry_attrs` so that no
PII-bearing attribute can sneak in unnoticed.

One event's trace crosses processes through Kafka: the producer injects the
W3C ``traceparent`` of its span into the record's headers
(:func:`kafka_headers`), and each agent and projection writer continues the
trace from there (:func:`context_from_headers`). So the gateway's request,
the publish, ingest, the identity and profile stages and the projection's row are one
trace. With tracing off no provider is installed: spans are OpenTelemetry's
no-ops and nothing is added to the headers.

Metrics follow the same switch and the same exporter choice
(:func:`configure_metrics`): ``touchpoint.events``, a counter of events per
stage and outcome (its rate is events/s per stage; its ``dead_lettered``
outcome the dead-letter count), ``touchpoint.events.clear_identifiers``, the
events that reached a channel topic with identifiers in clear, per source
topic (a channel system publishing with its own Kafka client; ingest seals
them), and ``touchpoint.lag``, records not yet
processed per stage (consumer lag of ingest, identity and profile, projection lag),
observed by the projections process. The export interval is OpenTelemetry's
``OTEL_METRIC_EXPORT_INTERVAL`` (60 s by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from touchpoint.settings import Settings
from touchpoint.telemetry_attrs import MESSAGING_TOPIC, OUTCOME, STAGE


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
    else:
        return provider  # tracing off: keep the no-op provider, spans cost next to nothing
    trace.set_tracer_provider(provider)
    return provider


def configure_metrics(settings: Settings, service: str, reader: MetricReader | None = None) -> MeterProvider | None:
    """Install a meter provider for ``service`` (tracing on, or an explicit ``reader``); None when off."""
    if reader is None and not settings.tracing:
        return None  # nothing installed: instruments stay no-ops
    resource = Resource.create({"service.name": service})
    if reader is None:
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            # The traces endpoint's sibling: .../v1/traces -> .../v1/metrics.
            endpoint = settings.otlp_endpoint.removesuffix("/v1/traces") + "/v1/metrics"
            reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint))
        else:
            reader = PeriodicExportingMetricReader(ConsoleMetricExporter())
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(provider)
    return provider


_METER = metrics.get_meter("touchpoint")
_EVENTS = _METER.create_counter(
    "touchpoint.events", unit="{event}", description="Events handled, by stage and outcome")


def count_events(stage: str, outcome: str, amount: int) -> None:
    """Add ``amount`` events of ``outcome`` (accepted, dead_lettered, written, ...) to ``stage``'s count."""
    if amount:
        _EVENTS.add(amount, {STAGE: stage, OUTCOME: outcome})


_CLEAR = _METER.create_counter(
    "touchpoint.events.clear_identifiers", unit="{event}",
    description="Events that reached a channel topic with identifiers in clear (sealed by ingest), by source topic")


def count_clear_identifiers(topic: str, amount: int) -> None:
    """Add ``amount`` events that arrived on ``topic`` with identifiers in clear (a producer other than ours)."""
    if amount:
        _CLEAR.add(amount, {MESSAGING_TOPIC: topic})


def meter() -> metrics.Meter:
    """Touchpoint's meter, for adapters' own instruments."""
    return _METER


def tracing_installed() -> bool:
    """Whether a tracer provider is installed (spans record). Hot loops skip the span machinery when not:
    even a no-op span, its context and its attributes cost the identity stage a sixth of its time per event.
    """
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def tracer(name: str) -> trace.Tracer:
    """The tracer for one adapter module."""
    return trace.get_tracer(name)


def kafka_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """The trace context (current, or ``context``) as Kafka headers; empty when there is no recording span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(key, value.encode()) for key, value in carrier.items()]


def context_from_headers(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> Context | None:
    """The trace context a record's headers carry (None when they carry none)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    carrier = {key: value.decode("latin-1") for key, value in pairs
               if key in ("traceparent", "tracestate") and isinstance(value, bytes)}
    return propagate.extract(carrier) if carrier else None
