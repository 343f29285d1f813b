"""The ingest stage: events from every channel topic, checked, then routed.

A message that decodes (Confluent-framed Avro, writer schema from the
registry) and honours the contract goes on to ``touchpoint.accepted``, the
single ordered input of identity resolution (:mod:`streams.identity`);
anything else goes to ``touchpoint.dlq`` with its original bytes and headers,
plus headers holding the reason and its source topic, partition and offset.
Nothing is dropped and nothing bad stops the stage.

"Now" for the future-time check is the message's own timestamp, not the wall
clock, so a replay judges every message exactly as the first run did. An
unreachable registry is not the message's fault: the stage waits and
retries instead of dead-lettering good events.

Accepted events keep the producer's partition key (a keyed hash of the
strongest identifier).

Clear identifiers (DESIGN.md §6). A channel system may publish with any
Kafka client and Confluent's Avro serializer, identifiers in clear. Nothing
in clear goes past ingest: an accepted event with any identifier that is not
a pseudonym has its identifiers normalised and sealed into their pseudonyms
exactly as the producer library does it (:func:`connectors.intake.producer.normalised`,
:func:`~connectors.intake.producer.keys_to_seal`,
:func:`~connectors.intake.producer.pseudonymised`), with the data keys of the whole
batch from the key store in one call, and is serialised again. Events that
arrive pseudonymised (the producer library, the gateway, the file import)
keep their original bytes: the common path costs one prefix check per
identifier. An event with a clear identifier that is not a valid one of its
kind goes to the dead-letter topic with the reason, as identity would have
sent it there: it never reaches ``accepted``. An unreachable key store, like
the registry, is waited out; good events are never dead-lettered and clear
values never forwarded meanwhile. Events that arrived in clear are counted per
source topic (``touchpoint.events.clear_identifiers``) and logged per batch
(topic and count, never a value); the channel topics keep them only for
``channel_retention_days`` (:mod:`connectors.platform.topics`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import faust
import orjson
from opentelemetry import trace

from connectors.intake.producer import has_clear_name, keys_to_seal, normalised, partition_key, pseudonymised
from connectors.platform.keystore import KeyStore, KeyStoreError, PostgresKeyStore
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from connectors.platform.topics import CHANNELS, event_topic
from streams.batch import Outgoing, Received, add_stage
from touchpoint.contract.models import ContractViolation, Event, identifier_values
from touchpoint.core.fold import Who
from touchpoint.core.instants import any_zone_ms
from touchpoint.core.normalise import Identifier
from touchpoint.core.pseudonym import is_pseudonym
from touchpoint.errors import RegistryError, SerializationError
from touchpoint.settings import Settings
from touchpoint.telemetry import (
    context_from_headers,
    count_clear_identifiers,
    count_events,
    kafka_headers,
    tracer,
    tracing_installed,
)
from touchpoint.telemetry_attrs import EVENT_ID, MESSAGING_OFFSET, MESSAGING_PARTITION, MESSAGING_TOPIC

log = logging.getLogger(__name__)

_TRACER = tracer(__name__)


@dataclass(frozen=True)
class Accepted:
    """An event that honours the contract.

    ``clear``: its identifiers normalised when any arrived in clear (to be sealed before it goes on);
    None when all are pseudonyms, and its original bytes go on as they are.
    """

    event: Event
    clear: dict[str, Identifier] | None = None


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


def has_clear_values(event: Event) -> bool:
    """Whether any identifier (or a profile's name) arrived in clear: not sealed, so not written by the producer
    library."""
    for value in identifier_values(event.identifiers).values():  # a loop, not all(...): this runs for every event
        if not is_pseudonym(value):
            return True
    return event.type == "profile" and has_clear_name(event)


def to_seal(verdict: Accepted, secret: bytes, region: str) -> Accepted | Rejected:
    """An accepted event with clear identifiers, its identifiers normalised for sealing.

    Rejected when one is not a valid identifier of its kind (the producer library refuses it; identity
    would dead-letter it): it must not reach ``accepted`` in clear.
    """
    try:
        return Accepted(verdict.event, normalised(verdict.event, secret, region))
    except ContractViolation as exc:
        return Rejected(f"contract: {exc}")


def sealed(clear: Sequence[Accepted], data_keys: dict[str, bytes]) -> list[Event]:
    """``clear``'s events with each identifier replaced by its pseudonym (``data_keys``: by identifier key).

    :param clear: events from :func:`to_seal`; ``data_keys`` must hold the keys
        :func:`~connectors.intake.producer.keys_to_seal` names for them.
    """
    made: dict[str, str] = {}  # a person's identifiers recur across a batch
    return [pseudonymised(item.event, item.clear or {}, data_keys, made) for item in clear]


WHO = "touchpoint-who"
"""Header of every record on ``accepted``: what identity reads of the event, so it need not decode the Avro."""


def who_header(event: Event) -> tuple[str, bytes]:
    """The ``touchpoint-who`` header of an accepted event: JSON ``[event_id, occurred_at in epoch ms, identifiers]``.

    Decoding the Avro event (and building its model) was a third of identity's time per event; this header
    reads in a tenth of that. The event's bytes stay as they were: the profile and every replay read them.
    """
    return WHO, orjson.dumps([event.event_id, any_zone_ms(event.occurred_at), event.identifiers])


def who_of(headers: Sequence[tuple[str, bytes]] | None) -> Who | None:
    """What a ``touchpoint-who`` header says; None without one (an event accepted before the header existed)."""
    for key, value in headers or ():
        if key == WHO:
            event_id, ms, identifiers = orjson.loads(value)
            return Who(event_id, ms, identifiers)
    return None


def dlq_headers(reason: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Headers that say why and from where an event was dead-lettered."""
    return [
        ("touchpoint.dlq.reason", reason.encode()),
        ("touchpoint.dlq.topic", topic.encode()),
        ("touchpoint.dlq.partition", str(partition).encode()),
        ("touchpoint.dlq.offset", str(offset).encode()),
    ]


class IngestLoop:
    """The ingest stage's batches (:class:`streams.batch.Stage`): judge, seal, route."""

    name = "ingest"

    def __init__(self, settings: Settings) -> None:
        self.topics = [event_topic(settings, ch) for ch in CHANNELS]
        self.serde = EventSerde(RegistryClient(settings.registry_url))
        self.secret = settings.identifier_key.get_secret_value().encode()
        self.region = settings.phone_region
        # Used only when a batch holds clear identifiers; it connects on first use.
        self.keystore = PostgresKeyStore(settings)
        self.accepted_name = settings.topic("accepted")
        self.dlq_name = settings.topic("dlq")

    async def start(self) -> None:
        """Ingest holds no state."""

    async def after_batch(self, backlog: bool) -> None:
        """Ingest holds no state."""

    async def close(self) -> None:
        """The key store connects per call."""

    async def handle(self, batch: list[Received], emit: Callable[[list[Outgoing]], None],
                     backlog: bool) -> list[Outgoing]:
        serde, secret, region = self.serde, self.secret, self.region
        accepted_name, dlq_name = self.accepted_name, self.dlq_name
        out: list[Outgoing] = []
        # Only events to seal are kept past their own turn: holding every decoded event of the batch
        # cost a third more per event on the common path, all of it in the garbage collector's passes.
        clear: dict[int, Accepted] = {}  # by place in ``out``
        arrived_clear: Counter[str] = Counter()
        traced = tracing_installed()
        for message in batch:
            now = datetime.fromtimestamp(message.timestamp, UTC)
            trace_headers = None
            if traced:
                with _TRACER.start_as_current_span(
                        "ingest", context=context_from_headers(message.headers), kind=trace.SpanKind.CONSUMER,
                        attributes={MESSAGING_TOPIC: message.topic, MESSAGING_PARTITION: message.partition,
                                    MESSAGING_OFFSET: message.offset}) as span:
                    verdict = await _judge_patiently(serde, message.value, now)
                    if isinstance(verdict, Accepted):
                        span.set_attribute(EVENT_ID, verdict.event.event_id)
                    trace_headers = kafka_headers() or None
            else:
                verdict = await _judge_patiently(serde, message.value, now)
            if isinstance(verdict, Accepted) and has_clear_values(verdict.event):
                arrived_clear[message.topic] += 1
                verdict = to_seal(verdict, secret, region)
            if isinstance(verdict, Accepted):
                if verdict.clear is not None:
                    clear[len(out)] = verdict
                # A pseudonym's key is its clear value's: the same partition key either way.
                person_key = partition_key(identifier_values(verdict.event.identifiers), secret, region)
                out.append((accepted_name, person_key, message.value,
                            [who_header(verdict.event), *(trace_headers or ())]))
            else:
                log.info("dead-lettered", extra={"topic": message.topic, "partition": message.partition,
                                                 "offset": message.offset, "reason": verdict.reason})
                headers = [*(message.headers or ()),
                           *dlq_headers(verdict.reason, message.topic, message.partition, message.offset)]
                out.append((dlq_name, message.key, message.value, headers))
        if clear:
            # The clear values are replaced before anything is sent: one key-store call for the batch.
            for place, (event, value) in zip(
                    clear, await _sealed_patiently(self.keystore, serde, list(clear.values())), strict=True):
                name, key, _, sent_headers = out[place][:4]
                out[place] = (name, key, value, [who_header(event), *(sent_headers or ())[1:]])
        for topic, count in sorted(arrived_clear.items()):
            log.info("%d event(s) from %s arrived with identifiers in clear (sealed, or dead-lettered if invalid)",
                     count, topic, extra={"topic": topic, "events": count})
            count_clear_identifiers(topic, count)
        dead = sum(1 for topic, *_ in out if topic == dlq_name)
        count_events("ingest", "accepted", len(out) - dead)
        count_events("ingest", "dead_lettered", dead)
        return out


def register_ingest(app: faust.App, settings: Settings) -> None:
    """Run the ingest stage as a task of ``app``."""
    add_stage(app, settings, IngestLoop(settings))


async def _sealed_patiently(keystore: KeyStore, serde: EventSerde,
                            clear: list[Accepted]) -> list[tuple[Event, bytes]]:
    """``clear``'s events sealed, and serialised again: one key-store call, key store and registry outages waited out.

    Waiting holds the whole batch (its offsets are not committed): dead-lettering good events, or sending
    them on in clear, would be worse than a stalled stage.
    """
    backoff = 0.5
    while True:
        try:
            data_keys = await keystore.data_keys(keys_to_seal((item.event, item.clear or {}) for item in clear),
                                                 create=True)
            return [(event, serde.serialize(event)) for event in sealed(clear, data_keys)]
        except (KeyStoreError, RegistryError) as exc:
            log.warning("cannot seal clear identifiers (key store or registry unavailable); retrying",
                        extra={"error": str(exc), "backoff_s": backoff})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 15.0)


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
