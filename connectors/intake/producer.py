"""The producer library for channel systems written in Python.

``EventProducer.publish`` takes events in their JSON form, checks each
against the contract, serialises the good ones in Avro (Confluent framing,
schema registered once) and sends them to their channel's topic; it returns
one result per event, in order: :class:`Delivered` (Kafka acknowledged it,
with its partition and offset), :class:`Refused` (the contract rejected it,
with every problem) or :class:`Failed` (Kafka did not acknowledge it in
time: safe to retry, since the event id is the idempotency key downstream).

Kafka settings: idempotent producer, ``acks=all``, small linger for batching;
every wait is bounded (``timeout_s``), so a dead broker gives ``Failed``
results or a :class:`PublishError`, never a hang.

Pseudonyms (DESIGN.md §6): no clear identifier reaches a topic. Each
accepted event's identifiers are normalised and replaced by their pseudonyms
(:mod:`touchpoint.core.pseudonym`: the keyed hash, plus the value sealed
with the identifier's own data key from the key store, or a card's last
four) before it is serialised; the data keys of a batch cost one key-store
statement (two when some are new). An identifier the identity rules would refuse (a card failing the
Luhn check, a phone number of impossible length) is refused here, with the
reason, rather than carried in clear to the dead-letter topic. When the key
store cannot be reached nothing is sent: every event of the batch is
:class:`Failed`, safe to retry.

Partition key: a keyed hash (HMAC-SHA256) of the event's strongest
identifier, so all of one person's events on a channel stay in order on one
partition while the key itself reveals nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from connectors.platform.keystore import KeyStore, KeyStoreError, PostgresKeyStore
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from connectors.platform.topics import event_topic
from touchpoint.contract.models import (
    ContractViolation,
    Event,
    ProfileEvent,
    ProfilePayload,
    identifier_values,
    validate_event,
)
from touchpoint.core.identifiers import strongest_identifier
from touchpoint.core.normalise import Identifier, InvalidIdentifier, normalise
from touchpoint.core.pseudonym import SHOWN_AS_IS, is_pseudonym, is_sealed_text, pseudonym, seal_text
from touchpoint.errors import PublishError
from touchpoint.kafka_security import aiokafka_options, describe_connection
from touchpoint.settings import Settings
from touchpoint.telemetry import kafka_headers, tracer
from touchpoint.telemetry_attrs import CHANNEL, EVENT_ID, EVENT_TYPE, MESSAGING_TOPIC

_TRACER = tracer(__name__)
log = logging.getLogger(__name__)


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
T = TypeVar("T")


def normalised(event: Event, secret: bytes, region: str) -> dict[str, Identifier]:
    """The event's identifiers, normalised and keyed (a pseudonym given stays as it is).

    :raises ContractViolation: an identifier is not a valid one of its kind.
    """
    found: dict[str, Identifier] = {}
    problems = []
    for kind, value in identifier_values(event.identifiers).items():
        try:
            found[kind] = normalise(kind, value, region=region, secret=secret)
        except InvalidIdentifier as exc:
            problems.append((f"identifiers.{kind}", exc.reason))
    if problems:
        raise ContractViolation(problems)
    return found


def has_clear_name(event: Event) -> bool:
    """Whether ``event`` is a profile event whose name is not sealed yet."""
    return isinstance(event, ProfileEvent) and event.payload.name is not None \
        and not is_sealed_text(event.payload.name)


def name_key(event: Event, identifiers: Mapping[str, Identifier]) -> str:
    """The identifier key a profile event's name is sealed under: its strongest identifier's, so erasing the
    person (their identifiers' data keys) erases the name."""
    kind, _ = strongest_identifier(identifier_values(event.identifiers))
    return identifiers[kind].key


def keys_to_seal(checked: Iterable[tuple[Event, dict[str, Identifier]]]) -> set[str]:
    """The identifier keys whose data keys sealing these events needs (their clear identifiers and names)."""
    keys: set[str] = set()
    for event, identifiers in checked:
        keys.update(ident.key for kind, ident in identifiers.items()
                    if kind not in SHOWN_AS_IS and not is_pseudonym(identifier_values(event.identifiers)[kind]))
        if has_clear_name(event):
            keys.add(name_key(event, identifiers))
    return keys


def pseudonymised(event: Event, identifiers: dict[str, Identifier], data_keys: dict[str, bytes],
                  sealed: dict[str, str]) -> Event:
    """``event`` with each identifier replaced by its pseudonym and a profile's name sealed (``data_keys``: by
    identifier key).

    :param sealed: pseudonyms by identifier key made so far in this batch, added to: a person's
        identifiers recur across a batch, and a pseudonym is the same every time it is made.
    """
    tokens = {}
    for kind, ident in identifiers.items():
        given = identifier_values(event.identifiers)[kind]
        if is_pseudonym(given):
            tokens[kind] = given
        elif (token := sealed.get(ident.key)) is not None:
            tokens[kind] = token
        else:
            tokens[kind] = sealed[ident.key] = pseudonym(kind, ident.key, ident.display, data_keys.get(ident.key))
    if has_clear_name(event):
        payload = cast(ProfilePayload, event.payload)
        key = name_key(event, identifiers)
        name = seal_text(key, cast(str, payload.name), data_keys[key], os.urandom(12))
        return event.model_copy(update={"identifiers": tokens, "payload": payload.model_copy(update={"name": name})})
    return event.model_copy(update={"identifiers": tokens})


def partition_key(identifiers: Mapping[str, str], secret: bytes, region: str) -> bytes:
    """Keyed hash of the strongest identifier's key: stable per person, clear or pseudonym, meaningless to a reader."""
    kind, value = strongest_identifier(identifiers)
    try:
        basis = normalise(kind, value, region=region, secret=secret).key
    except InvalidIdentifier:
        basis = f"{kind}:{value}"  # the identity stage will refuse it; any stable key will do
    return hmac.new(secret, basis.encode(), hashlib.sha256).hexdigest()[:32].encode()


class AsyncEventProducer:
    """Publishes contract-checked events to the channel topics (asyncio, aiokafka).

    Create it with :meth:`start`; the HTTP gateway uses it directly on its
    event loop. aiokafka is used rather than kafka-python because it builds
    record batches in C: ~27 µs per send here against ~145 µs.
    """

    def __init__(self, settings: Settings, serde: EventSerde, producer: AIOKafkaProducer, keystore: KeyStore, *,
                 timeout_s: float, own_registry: bool, linger_ms: int = 5) -> None:
        self._settings = settings
        self._linger_ms = linger_ms
        self._keystore = keystore
        self._serde = serde
        self._producer = producer
        self._timeout_s = timeout_s
        self._own_registry = own_registry
        self._secret = settings.identifier_key.get_secret_value().encode()
        self._region = settings.phone_region

    @classmethod
    async def start(cls, settings: Settings, registry: RegistryClient | None = None, *,
                    timeout_s: float = 30.0, linger_ms: int = 5,
                    keystore: KeyStore | None = None) -> AsyncEventProducer:
        """Connect to Kafka and register the writer schema.

        :param keystore: where identifiers' data keys live (default: the settings' PostgreSQL).

        :raises PublishError: Kafka cannot be reached.
        :raises RegistryError: the registry cannot be reached or refuses the schema.
        """
        serde = EventSerde(registry or RegistryClient(settings.registry_url))
        producer = _kafka_producer(settings, timeout_s, linger_ms)
        try:
            await asyncio.wait_for(producer.start(), timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            await producer.stop()
            raise PublishError(f"cannot reach Kafka at {describe_connection(settings)}: {exc!r}") from exc
        try:
            # The registry client is synchronous; keep the event loop free while it answers.
            await asyncio.to_thread(lambda: serde.writer_id)
        except BaseException:
            await producer.stop()
            raise
        return cls(settings, serde, producer, keystore or PostgresKeyStore(settings), timeout_s=timeout_s,
                   own_registry=registry is None, linger_ms=linger_ms)

    async def _renew(self, broken: AIOKafkaProducer) -> None:
        """Replace ``broken``, whose idempotent session no broker will take any more, by a new producer.

        aiokafka numbers an idempotent producer's batches per partition; once one
        batch is lost to an error (as when the broker restarts) the broker refuses
        every later batch with ``OutOfOrderSequenceNumber``, for good, so "safe to
        retry" would never succeed. A new producer has a new producer id.
        """
        fresh = _kafka_producer(self._settings, self._timeout_s, self._linger_ms)
        try:
            await asyncio.wait_for(fresh.start(), self._timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            await fresh.stop()
            log.warning("Kafka producer not renewed, tried again on the next failure: %r", exc)
            return
        if self._producer is not broken:  # a concurrent publish renewed it already
            await fresh.stop()
            return
        self._producer = fresh
        log.warning("Kafka producer renewed: the broker refused its batches as out of sequence")
        try:
            await asyncio.wait_for(broken.stop(), self._timeout_s)
        except TimeoutError:
            log.warning("the replaced Kafka producer did not stop within %.0fs", self._timeout_s)

    async def close(self) -> None:
        await self._keystore.close()
        await self._producer.stop()
        if self._own_registry:
            self._serde.registry.close()

    async def publish(self, docs: Iterable[dict[str, Any] | Event], now: datetime,
                      parent: Context | None = None) -> list[Result]:
        """Check, send and confirm a batch of events; one result per event, in order.

        :param now: arrival time, to judge events dated in the future.
        :param parent: the trace context the publish spans belong to (default: the current one).
        """
        results: list[Result | None] = []
        pending: list[tuple[int, str, asyncio.Future[Any]]] = []
        producer = self._producer
        checked: list[tuple[Event, dict[str, Identifier]] | Refused] = []
        for doc in docs:
            try:
                event = doc if isinstance(doc, Event) else validate_event(doc, now)
                checked.append((event, normalised(event, self._secret, self._region)))
            except ContractViolation as exc:
                event_id = (doc.event_id if isinstance(doc, Event)
                            else doc.get("event_id") if isinstance(doc, dict) else None)
                checked.append(Refused(event_id if isinstance(event_id, str) else None, exc.problems))
        try:
            data_keys = await self._keystore.data_keys(
                keys_to_seal(item for item in checked if not isinstance(item, Refused)), create=True)
        except KeyStoreError as exc:
            return [item if isinstance(item, Refused) else Failed(item[0].event_id, f"not sent: {exc}")
                    for item in checked]
        sealed: dict[str, str] = {}
        for item in checked:
            if isinstance(item, Refused):
                results.append(item)
                continue
            identifiers = item[1]
            event = pseudonymised(item[0], identifiers, data_keys, sealed)
            topic = event_topic(self._settings, event.channel)
            # One span per event; its context rides in the record's headers to the agents downstream.
            span = _TRACER.start_span("publish", context=parent, kind=trace.SpanKind.PRODUCER, attributes={
                EVENT_ID: event.event_id, EVENT_TYPE: event.type, CHANNEL: event.channel, MESSAGING_TOPIC: topic})
            try:
                # Bounded by request_timeout_ms (metadata wait); returns once the record is in a batch.
                key = partition_key(identifier_values(event.identifiers), self._secret, self._region)
                future = await producer.send(topic, key=key, value=self._serde.serialize(event),
                                             headers=kafka_headers(trace.set_span_in_context(span)) or None)
            except KafkaError as exc:
                span.end()
                results.append(Failed(event.event_id, f"not sent: {exc!r}"))
                continue
            future.add_done_callback(lambda _, span=span: span.end())
            pending.append((len(results), event.event_id, future))
            results.append(None)
        if pending:
            # One bounded wait for the whole batch: a wait_for per record costs a task each.
            await asyncio.wait([future for _, _, future in pending], timeout=self._timeout_s)
        broken = False
        for index, event_id, future in pending:
            if not future.done():
                future.cancel()
                results[index] = Failed(event_id, f"not acknowledged by Kafka within {self._timeout_s:.0f}s")
            elif future.exception() is not None:
                results[index] = Failed(event_id, f"not acknowledged by Kafka: {future.exception()!r}")
                broken = broken or isinstance(future.exception(), OutOfOrderSequenceNumber)
            else:
                metadata = future.result()
                results[index] = Delivered(event_id, metadata.topic, metadata.partition, metadata.offset)
        if broken and producer is self._producer:
            await self._renew(producer)
        return [r for r in results if r is not None]


class EventProducer:
    """The synchronous face of :class:`AsyncEventProducer`, for scripts and threads.

    Runs the async producer on a private event loop in a daemon thread;
    ``publish`` blocks until every event has its result. Thread-safe.
    """

    def __init__(self, settings: Settings, registry: RegistryClient | None = None, *,
                 timeout_s: float = 30.0, linger_ms: int = 5) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="touchpoint-producer", daemon=True)
        self._thread.start()
        try:
            self._async = self._call(AsyncEventProducer.start(settings, registry, timeout_s=timeout_s,
                                                              linger_ms=linger_ms))
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        try:
            self._call(self._async.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, docs: Iterable[dict[str, Any] | Event], now: datetime) -> list[Result]:
        """See :meth:`AsyncEventProducer.publish`."""
        # The private loop's tasks don't see the caller's context: hand its trace over explicitly.
        return self._call(self._async.publish(list(docs), now, parent=otel_context.get_current()))


@dataclass
class PublishSummary:
    """What ``publish_all`` did, for a person to read."""

    delivered: int = 0
    refused: int = 0
    failed: int = 0
    refusals: list[Refused] | None = None

    def __str__(self) -> str:
        lines = [f"delivered {self.delivered}, refused {self.refused}, failed {self.failed}"]
        for refusal in (self.refusals or [])[:10]:
            problems = "; ".join(f"{field}: {message}" for field, message in refusal.problems)
            lines.append(f"  refused {refusal.event_id}: {problems}")
        return "\n".join(lines)


def publish_all(settings: Settings, docs: Iterable[dict[str, Any]], batch_size: int = 1000,
                progress: bool = True) -> PublishSummary:
    """Publish a stream of JSON-form events in batches, with a progress bar on stderr.

    :raises PublishError: Kafka did not acknowledge a batch (rerun: event ids make it idempotent downstream).
    """
    from tqdm import tqdm

    summary = PublishSummary(refusals=[])
    with EventProducer(settings) as producer, tqdm(unit=" events", disable=not progress) as bar:
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            for result in producer.publish(batch, datetime.now(UTC)):
                if isinstance(result, Delivered):
                    summary.delivered += 1
                elif isinstance(result, Refused):
                    summary.refused += 1
                    summary.refusals.append(result)  # type: ignore[union-attr]
                else:
                    summary.failed += 1
            bar.update(len(batch))
            batch.clear()
            if summary.failed:
                raise PublishError(f"Kafka did not acknowledge {summary.failed} event(s); {summary}")

        for doc in docs:
            batch.append(doc)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    return summary


def _kafka_producer(settings: Settings, timeout_s: float, linger_ms: int) -> AIOKafkaProducer:
    """The idempotent, ``acks=all`` aiokafka producer the library sends with (not started)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="touchpoint-producer",
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        request_timeout_ms=int(timeout_s * 1000),
        **aiokafka_options(settings),
    )
