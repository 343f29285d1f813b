"""The producer library for channel systems written in Python.

``EventProducer.publish`` takes events in their JSON form, checks each
against the contract, serialises the good ones in Avro (Confluent framing,
schema registered once) and sends them to their channel's topic; it returns
one result per event, in order: :class:`Delivered` (Kafka acknowledged it,
with its partition and offset), :class:`Refused` (the contract rejected it,
with every problem) or :class:`Failed` (Kafka did not acknowledge it in
time: safe to retry, since the event id is the idempotency key downstream).

Kafka settings: idempotent producer, ``acks=all``, small linger for batching;
every wait is bounded (``max_block_ms``, ``delivery_timeout_ms``), so a dead
broker gives ``Failed`` results or a :class:`PublishError`, never a hang.

Partition key: a keyed hash (HMAC-SHA256) of the event's strongest
identifier, so all of one person's events on a channel stay in order on one
partition while the key itself reveals nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from connectors.topics import event_topic
from touchpoint.contract.models import ContractViolation, Event, validate_event
from touchpoint.core.identifiers import strongest_identifier
from touchpoint.errors import PublishError
from touchpoint.settings import Settings


@dataclass(frozen=True)
class Delivered:
    event_id: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Refused:
    event_id: str | None
    problems: list[tuple[str, str]]


@dataclass(frozen=True)
class Failed:
    event_id: str
    reason: str


Result = Delivered | Refused | Failed


def partition_key(event: Event, secret: bytes) -> bytes:
    """Keyed hash of the strongest identifier: stable per person, meaningless to a reader."""
    kind, value = strongest_identifier(dict(event.identifiers))
    return hmac.new(secret, f"{kind}:{value.strip().casefold()}".encode(), hashlib.sha256).hexdigest()[:32].encode()


class EventProducer:
    """Publishes contract-checked events to the channel topics."""

    def __init__(self, settings: Settings, registry: RegistryClient | None = None, *,
                 timeout_s: float = 30.0, linger_ms: int = 5) -> None:
        self._settings = settings
        self._own_registry = registry is None
        self._serde = EventSerde(registry or RegistryClient(settings.registry_url))
        self._secret = settings.identifier_key.get_secret_value().encode()
        self._timeout_s = timeout_s
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap,
                client_id="touchpoint-producer",
                acks="all",
                enable_idempotence=True,
                linger_ms=linger_ms,
                batch_size=256 * 1024,
                compression_type=None,
                max_block_ms=int(timeout_s * 1000),
                request_timeout_ms=int(timeout_s * 1000) // 2,
                delivery_timeout_ms=int(timeout_s * 1000),
            )
        except KafkaError as exc:
            raise PublishError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc

    def close(self) -> None:
        self._producer.close(timeout=self._timeout_s)
        if self._own_registry:
            self._serde.registry.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, docs: Iterable[dict[str, Any] | Event], now: datetime) -> list[Result]:
        """Check, send and confirm a batch of events; one result per event, in order.

        :param now: arrival time, to judge events dated in the future.
        """
        results: list[Result | None] = []
        pending = []
        for doc in docs:
            try:
                event = doc if isinstance(doc, Event) else validate_event(doc, now)
            except ContractViolation as exc:
                event_id = doc.get("event_id") if isinstance(doc, dict) else None
                results.append(Refused(event_id if isinstance(event_id, str) else None, exc.problems))
                continue
            topic = event_topic(self._settings, event.channel)
            try:
                future = self._producer.send(topic, key=partition_key(event, self._secret),
                                             value=self._serde.serialize(event))
            except KafkaError as exc:
                results.append(Failed(event.event_id, f"not sent: {exc}"))
                continue
            pending.append((len(results), event.event_id, future))
            results.append(None)
        self._producer.flush(timeout=self._timeout_s)
        for index, event_id, future in pending:
            try:
                metadata = future.get(timeout=self._timeout_s)
                results[index] = Delivered(event_id, metadata.topic, metadata.partition, metadata.offset)
            except KafkaError as exc:
                results[index] = Failed(event_id, f"not acknowledged by Kafka: {exc}")
        return [r for r in results if r is not None]
