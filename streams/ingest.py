"""The ingest agent: events from every channel topic, checked, then routed.

A message that decodes (Confluent-framed Avro, writer schema from the
registry) and honours the contract goes on to ``touchpoint.accepted``, the
single ordered input of identity resolution (:mod:`streams.identity`);
anything else goes to ``touchpoint.dlq`` with its original bytes and headers,
plus headers holding the reason and its source topic, partition and offset.
Nothing is dropped and nothing bad stops the agent.

"Now" for the future-time check is the message's own timestamp, not the wall
clock, so a replay judges every message exactly as the first run did. An
unreachable registry is not the message's fault: the agent waits and
retries instead of dead-lettering good events.

Accepted events keep the producer's partition key (a keyed hash of the
strongest identifier).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import faust
from opentelemetry import trace

from connectors.producer import partition_key
from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from connectors.topics import CHANNELS, event_topic
from touchpoint.contract.models import ContractViolation, Event
from touchpoint.errors import RegistryError, SerializationError
from streams.app import BATCH_SIZE, BATCH_WITHIN_S, Outgoing, send_batch
from touchpoint.settings import Settings
from touchpoint.telemetry import context_from_headers, count_events, kafka_headers, tracer
from touchpoint.telemetry_attrs import EVENT_ID, MESSAGING_OFFSET, MESSAGING_PARTITION, MESSAGING_TOPIC

log = logging.getLogger(__name__)

_TRACER = tracer(__name__)


@dataclass(frozen=True)
class Accepted:
    event: Event


@dataclass(frozen=True)
class Rejected:
    reason: str


def judge(serde: EventSerde, raw: bytes | None, now: datetime) -> Accepted | Rejected:
    """Decode and check one message; the verdict carries a reason a person can act on.

    :raises RegistryError: the registry could not be asked (retry later).
    """
    if raw is None:
        return Rejected("undecodable: empty message (tombstone)")
    try:
        return Accepted(serde.deserialize(raw, now))
    except SerializationError as exc:
        return Rejected(f"undecodable: {exc}")
    except ContractViolation as exc:
        return Rejected(f"contract: {exc}")


def dlq_headers(reason: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Headers that say why and from where an event was dead-lettered."""
    return [
        ("touchpoint.dlq.reason", reason.encode()),
        ("touchpoint.dlq.topic", topic.encode()),
        ("touchpoint.dlq.partition", str(partition).encode()),
        ("touchpoint.dlq.offset", str(offset).encode()),
    ]


def register_ingest(app: faust.App, settings: Settings) -> None:
    """Register the ingest agent on ``app``."""
    sources = app.topic(*(event_topic(settings, ch) for ch in CHANNELS), key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")
    serde = EventSerde(RegistryClient(settings.registry_url))
    secret = settings.identifier_key.get_secret_value().encode()

    accepted_name = settings.topic("accepted")
    dlq_name = settings.topic("dlq")

    @app.agent(sources, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            out: list[Outgoing] = []
            for event in events:
                message = event.message
                now = datetime.fromtimestamp(message.timestamp, UTC)
                with _TRACER.start_as_current_span(
                        "ingest", context=context_from_headers(message.headers), kind=trace.SpanKind.CONSUMER,
                        attributes={MESSAGING_TOPIC: message.topic, MESSAGING_PARTITION: message.partition,
                                    MESSAGING_OFFSET: message.offset}) as span:
                    verdict = await _judge_patiently(serde, message.value, now)
                    trace_headers = kafka_headers()
                if isinstance(verdict, Accepted):
                    span.set_attribute(EVENT_ID, verdict.event.event_id)
                    out.append((accepted_name, partition_key(verdict.event.identifiers, secret, settings.phone_region), message.value,
                                trace_headers or None))
                else:
                    log.info("dead-lettered", extra={"topic": message.topic, "partition": message.partition,
                                                     "offset": message.offset, "reason": verdict.reason})
                    headers = [*_header_list(message.headers),
                               *dlq_headers(verdict.reason, message.topic, message.partition, message.offset)]
                    out.append((dlq_name, message.key, message.value, headers))
            await send_batch(app, out)
            dead = sum(1 for topic, *_ in out if topic == dlq_name)
            count_events("ingest", "accepted", len(out) - dead)
            count_events("ingest", "dead_lettered", dead)


def _header_list(headers: object) -> list[tuple[str, bytes]]:
    """Faust hands headers over as a mapping or a list of pairs; we send a list."""
    if not headers:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)  # type: ignore[call-overload]


async def _judge_patiently(serde: EventSerde, raw: bytes | None, now: datetime) -> Accepted | Rejected:
    """``judge``, waiting out registry outages with capped backoff."""
    backoff = 0.5
    while True:
        try:
            return judge(serde, raw, now)
        except RegistryError as exc:
            log.warning("registry unavailable; retrying", extra={"error": str(exc), "backoff_s": backoff})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 15.0)
