"""Hostile bytes in the stream and clear card numbers at rest, on the real stack with a real worker.

Garbage. Bytes that reach a channel topic from anywhere (random bytes,
truncated Avro, a wrong magic byte, an unknown schema id, an empty value, a
tombstone, a value near Kafka's size limit) must each land in the
dead-letter topic exactly once with a reason and the place they came from,
while valid events published after them still reach ``accepted`` and the
read model, and the worker process stays alive. Every garbage record carries
a ``hostile.case`` header, which the dead-letter topic keeps, so each one is
found by name.

Clear identifiers (and names). A generated population goes through the real pipeline
(worker and projection writer); then ``pg_dump`` of the database and every
record (key, value, headers) of every topic of the prefix are searched for
each identifier the delivered events carried (card numbers, e-mail
addresses, phone numbers, customer numbers, cookies, devices), as given and
normalised. DESIGN.md §6 says topics never hold a clear identifier: the
producer library writes each as its pseudonym (a keyed hash and the value
sealed with the identifier's own key; a card's last four).

A channel system that is not written in Python publishes with its own Kafka
client and clear identifiers. A second population is published that way:
confluent-kafka with Confluent's own ``AvroSerializer`` against the
registry's Confluent-compatible API (the schema looked up, not registered;
RecordNameStrategy). Its clear values may sit on the five channel topics
(short retention), and must be nowhere else: ingest seals them before
``accepted``; and its events must still reach the read model.

The module has its own topic prefix and database, so its dead letters and
topics hold only what it wrote.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from subprocess import Popen
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from backbone.demo import sample_events
from connectors.intake.producer import Delivered, EventProducer, Refused
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import SUBJECT, EventSerde
from connectors.platform.topics import CHANNELS, event_topic
from tests.e2e.oracle import committed, drained, end_offset
from tests.e2e.test_pipeline import wait_until
from tests.fix_stack import scoped, spawn_touchpoint, stop_process
from touchpoint.contract import to_avro_record, validate_event
from touchpoint.core.identifiers import strongest_identifier
from touchpoint.core.normalise import normalise
from touchpoint.generate import generate
from touchpoint.settings import Settings
from touchpoint.stack.postgres import ensure_installed

pytestmark = pytest.mark.integration

CASE_HEADER = "hostile.case"


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    worker: Popen[bytes]
    writer: Popen[bytes]
    logs: Path

    @property
    def procs(self) -> tuple[Popen[bytes], ...]:
        return self.worker, self.writer


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """A worker and the projection writer on a topic prefix and database of this module's own."""
    logs = tmp_path_factory.mktemp("hostile")
    with scoped(settings, f"{settings.pg_database}_hostile", f"{settings.topic_prefix}-hostile-stream") as own:
        worker = spawn_touchpoint(own, "worker", log=logs / "worker.log")
        writer = spawn_touchpoint(own, "project", log=logs / "project.log")
        try:
            yield Pipeline(own, worker, writer, logs)
        finally:
            stop_process(writer)
            stop_process(worker)


# --- garbage on the channel topics ---

def garbage(valid: bytes) -> dict[str, bytes | None]:
    """Named hostile values, built around one valid Confluent-framed Avro event."""
    rng = random.Random(9)  # same garbage every run
    schema_id = int.from_bytes(valid[1:5], "big")
    cases: dict[str, bytes | None] = {
        "empty": b"",
        "tombstone": None,
        "random-1": rng.randbytes(1),
        "random-64": rng.randbytes(64),
        "random-4k": rng.randbytes(4096),
        "text": b"BEGIN:VCARD\nFN:not an event\nEND:VCARD",
        "json-not-avro": b'{"event_id": "x", "type": "purchase"}',
        "magic-only": b"\x00",
        "wrong-magic": b"\x01" + valid[1:],
        "unknown-schema-id": valid[:1] + (2**31 - 7).to_bytes(4, "big") + valid[5:],
        "negative-schema-id": valid[:1] + (-1).to_bytes(4, "big", signed=True) + valid[5:],
        # Our schema id, then bytes that claim a string of ~1 GiB (zig-zag varint) and end.
        "huge-length-claim": valid[:5] + b"\xfe\xff\xff\xff\x07" + b"x" * 10,
        # Just under the broker's 1 MiB default: framed with our schema id, the rest noise.
        "huge-value": valid[:5] + rng.randbytes(900_000),
        "valid-then-noise": valid + rng.randbytes(32),
    }
    for cut in (1, 4, 5, 6, len(valid) // 2, len(valid) - 1):
        cases[f"truncated-{cut}"] = valid[:cut]
    assert schema_id > 0
    return cases


def dead_letters(settings: Settings) -> dict[str, list[dict[str, bytes]]]:
    """Dead letters by their ``hostile.case`` header (headers of each, the original's and the DLQ's)."""
    consumer = KafkaConsumer(settings.topic("dlq"), bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000,
                             fetch_max_bytes=4 * 1024 * 1024, max_partition_fetch_bytes=2 * 1024 * 1024)
    found: dict[str, list[dict[str, bytes]]] = {}
    try:
        for message in consumer:
            headers = dict(message.headers)
            name = headers.get(CASE_HEADER, b"(none)").decode()
            found.setdefault(name, []).append({**headers, "(value)": message.value or b""})
    finally:
        consumer.close()
    return found


def accepted_ids(settings: Settings) -> set[str]:
    """Event ids on ``accepted``."""
    consumer = KafkaConsumer(settings.topic("accepted"), bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000,
                             isolation_level="read_committed")
    try:
        with RegistryClient(settings.registry_url) as registry:
            serde = EventSerde(registry)
            return {serde.deserialize(m.value).event_id for m in consumer}
    finally:
        consumer.close()


def interaction_ids(settings: Settings) -> set[str]:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM interactions")}


def test_garbage_on_channel_topics_is_dead_lettered_and_the_pipeline_goes_on(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    with RegistryClient(settings.registry_url) as registry:
        valid = EventSerde(registry).serialize(validate_event(sample_events(f"valid-{run}", now)[0], now))
    cases = garbage(valid)
    raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", max_request_size=2 * 1024 * 1024)
    sent: dict[str, tuple[str, int, int]] = {}
    try:
        for n, (name, value) in enumerate(cases.items()):
            topic = event_topic(settings, CHANNELS[n % len(CHANNELS)])
            meta = raw.send(topic, key=f"k{n}".encode(), value=value,
                            headers=[(CASE_HEADER, name.encode())]).get(30)
            sent[name] = (topic, meta.partition, meta.offset)
    finally:
        raw.close()

    # Valid events after the garbage, on every channel: the pipeline must still carry them.
    events = sample_events(f"after-garbage-{run}", now)
    with EventProducer(settings) as producer:
        assert all(isinstance(r, Delivered) for r in producer.publish(events, now))
    ids = {str(e["event_id"]) for e in events}

    dead = wait_until(lambda: set(cases) <= set(found := dead_letters(settings)) and found, 120,
                      "every garbage record in the dead-letter topic", pipeline.procs)
    missing = set(cases) - set(dead)
    assert not missing, f"dropped silently: {sorted(missing)}"
    for name, (topic, partition, offset) in sent.items():
        assert len(dead[name]) == 1, f"{name}: dead-lettered {len(dead[name])} times"
        [letter] = dead[name]
        reason = letter["touchpoint.dlq.reason"].decode()
        assert reason.startswith(("undecodable: ", "contract: ")) and len(reason) > len("undecodable: "), \
            (name, reason)
        assert letter["touchpoint.dlq.topic"].decode() == topic, name
        assert (int(letter["touchpoint.dlq.partition"]), int(letter["touchpoint.dlq.offset"])) == \
            (partition, offset), name
        assert letter["(value)"] == (cases[name] or b""), f"{name}: the original bytes are kept"
    assert set(dead) == set(cases), f"dead letters that are not ours: {sorted(set(dead) - set(cases))}"

    wait_until(lambda: ids <= accepted_ids(settings), 90, "the valid events on accepted", pipeline.procs)
    wait_until(lambda: ids <= interaction_ids(settings), 90, "the valid events in the read model", pipeline.procs)
    assert pipeline.worker.poll() is None, "the worker survived the garbage"
    log = (pipeline.logs / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


# --- no card number in clear ---

@dataclass(frozen=True)
class Scan:
    clear: dict[tuple[str, str], set[str]]  # (kind, normalised display) -> the forms the population used
    places: dict[str, bytes]  # where -> everything read there
    direct: dict[tuple[str, str], set[str]]  # the same for the population published by a client not ours
    direct_ids: set[str]  # the event ids of that population
    direct_keys: set[str]  # the keys (keyed hashes) of its customer numbers


def _pg_dump(settings: Settings) -> bytes:
    """``pg_dump`` of the settings' database as plain SQL (Debian's binary beside the server's)."""
    pg_dump = ensure_installed() / "pg_dump"
    result = subprocess.run(  # noqa: S603
        [str(pg_dump), "--host", settings.pg_host, "--port", str(settings.pg_port), "--username", settings.pg_user,
         "--no-password", "--dbname", settings.pg_database],
        env={**os.environ, "PGPASSWORD": settings.pg_password.get_secret_value()}, capture_output=True,
        timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"CREATE TABLE public.customers" in result.stdout
    return result.stdout


def _topics_raw(settings: Settings) -> dict[str, bytes]:
    """Every record (key, value, header names and values) of every topic of the prefix, aborted ones too."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             isolation_level="read_uncommitted", consumer_timeout_ms=5000,
                             fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        # The backbone's topics and Faust's own (``<prefix>-__assignor-__leader``); no other module's
        # prefix starts with this one.
        topics = sorted(t for t in consumer.topics() if t.startswith(settings.topic_prefix))
        blobs: dict[str, bytearray] = {t: bytearray() for t in topics}
        parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = consumer.end_offsets(parts)
        todo = {tp for tp in parts if ends[tp] > 0}
        consumer.assign(list(todo))
        consumer.seek_to_beginning(*todo)
        while todo:
            batch = consumer.poll(timeout_ms=5000)
            assert batch or all(consumer.position(tp) >= ends[tp] for tp in todo), "reading the topics stalled"
            for tp, messages in batch.items():
                for m in messages:
                    blob = blobs[tp.topic]
                    blob += m.key or b""
                    blob += m.value or b""
                    for name, value in m.headers or ():
                        blob += name.encode() + (value or b"")
            todo = {tp for tp in todo if consumer.position(tp) < ends[tp]}
        return {f"topic {t}": bytes(b) for t, b in blobs.items()}
    finally:
        consumer.close()


def _clear_forms(events: list[dict[str, Any]], secret: bytes) -> dict[tuple[str, str], set[str]]:
    """(kind, normalised display) -> every form of it the events wrote (a card's number only, never its display);
    a profile's name as kind ``name``: personal data sealed like an identifier."""
    clear: dict[tuple[str, str], set[str]] = {}
    for event in events:
        if event.get("type") == "profile" and (event.get("payload") or {}).get("name"):
            clear.setdefault(("name", event["payload"]["name"]), set()).add(event["payload"]["name"])
        for kind, value in event["identifiers"].items():
            display = normalise(kind, value, secret=secret).display
            forms = {value.strip(), re.sub(r"[\s-]", "", value)} | ({display} if kind != "card" else set())
            clear.setdefault((kind, display), set()).update(forms)
    return clear


def _other_name(event: dict[str, Any]) -> Any:
    """An event's payload, a profile's name written "Last, First": no name of the other population (all "First
    Last") is in it, nor it in them."""
    payload = event["payload"]
    if event.get("type") != "profile" or not payload.get("name"):
        return payload
    first, _, last = payload["name"].partition(" ")
    return {**payload, "name": f"{last}, {first}"}


def _other_person(identifiers: dict[str, str]) -> dict[str, str]:
    """Identifiers no one of another generated population has (valid ones of the same kinds).

    The generator draws customer and card numbers from the seed, but phones, e-mails, cookies and
    devices from the customer's index, so two populations would share them.
    """
    changed = {}
    for kind, value in identifiers.items():
        if kind == "email":
            local, _, domain = value.rpartition("@")
            value = f"{local}.direct@{domain}"
        elif kind == "phone":  # another number of the same range, in the form it was written (E.164 or national)
            lead, digits = value[0], re.sub(r"\D", "", value)
            value = lead + str(int(digits) + 5000) if lead == "+" else "0" + str(int(digits) + 5000)
        elif kind in ("cookie", "device"):
            prefix, _, rest = value.partition("-")
            value = f"{prefix}-x{rest}"
        changed[kind] = value
    return changed


def _publish_directly(settings: Settings, docs: list[dict[str, Any]]) -> None:
    """Publish events as a channel system not written in Python would: its own Kafka client, identifiers in clear.

    confluent-kafka (librdkafka) with Confluent's ``AvroSerializer``: the schema is the registry's latest
    under our subject, looked up through its Confluent-compatible API and never registered
    (``auto.register.schemas=false``, ``use.latest.version=true``, RecordNameStrategy); the key is the
    channel system's own keyed hash of the strongest identifier.
    """
    registry = SchemaRegistryClient({"url": settings.registry_url})
    latest = registry.get_latest_version(SUBJECT)
    serializer = AvroSerializer(registry, latest.schema.schema_str, conf={
        "auto.register.schemas": False, "use.latest.version": True,
        "subject.name.strategy": record_subject_name_strategy})
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True,
                         "linger.ms": 5})
    failures: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    now = datetime.now(UTC)
    for doc in docs:
        topic = event_topic(settings, doc["channel"])
        # The record the system's own mapping builds: the JSON form's fields, the payload's branch named.
        record = to_avro_record(validate_event(doc, now))
        kind, value = strongest_identifier(doc["identifiers"])
        key = hmac.new(b"the channel system's own key", f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
        try:
            producer.produce(topic, key=key.encode(), on_delivery=delivered,
                             value=serializer(record, SerializationContext(topic, MessageField.VALUE)))
        except (BufferError, KafkaException) as exc:
            failures.append(repr(exc))
        producer.poll(0)
    assert producer.flush(60) == 0, "the direct producer's events were all acknowledged"
    assert failures == []


@pytest.fixture(scope="module")
def scan(pipeline: Pipeline) -> Scan:
    """Two generated populations with cards through the pipeline, one by our producer library and one by a
    client that is not ours, then the database and the topics, read raw."""
    settings = pipeline.settings
    secret = settings.identifier_key.get_secret_value().encode()
    events = list(generate(customers=60, days=45, seed=77))
    before = committed(settings)
    with EventProducer(settings) as producer:
        results = producer.publish(events, datetime.now(UTC))
    delivered = [r for r in results if isinstance(r, Delivered)]
    assert len(delivered) > 0.9 * len(events) and any(isinstance(r, Refused) for r in results)
    sent = {r.event_id for r in delivered}
    clear = _clear_forms([event for event in events if event.get("event_id") in sent], secret)

    direct_events = [{**event, "identifiers": _other_person(event["identifiers"]), "payload": _other_name(event)}
                     for event in generate(customers=40, days=45, seed=78, bad_share=0.0)]
    _publish_directly(settings, direct_events)
    direct = _clear_forms(direct_events, secret)
    assert not set(direct) & set(clear), "the two populations share no identifier"
    direct_ids = {str(event["event_id"]) for event in direct_events}
    direct_keys = {normalise(kind, value, secret=secret).key for event in direct_events
                   for kind, value in event["identifiers"].items() if kind == "customer_no"}

    wait_until(lambda: end_offset(settings, settings.topic("customer-views")) and drained(settings, before), 180,
               "the worker and the projections to catch up", pipeline.procs)
    wait_until(lambda: direct_ids <= interaction_ids(settings) and drained(settings, before), 180,
               "the direct producer's events in the read model", pipeline.procs)
    places = {"pg_dump": _pg_dump(settings), **_topics_raw(settings)}
    return Scan(clear, places, direct, direct_ids, direct_keys)


def _found(scan: Scan, place: str, clear: dict[tuple[str, str], set[str]] | None = None) -> list[str]:
    """The identifiers (of ``clear``, default the producer library's) found in clear in ``place``, each named
    by its kind and last four characters only."""
    blob = scan.places[place]
    return sorted(_name(kind, display) for (kind, display), forms in (scan.clear if clear is None else clear).items()
                  if any(form.encode() in blob for form in forms))


def _name(kind: str, display: str) -> str:
    """An identifier named without giving it away in a test's output: its kind and last four characters."""
    return f"{kind} …{display[-4:]}"


def test_the_population_has_identifiers_and_the_places_hold_its_data(scan: Scan) -> None:
    """The scan is not vacuous: identifiers of every kind were sent and the dump and topics hold the population."""
    kinds = Counter(kind for kind, _ in scan.clear)
    assert kinds["card"] >= 20 and kinds["email"] >= 20 and kinds["phone"] >= 20 and kinds["customer_no"] >= 20
    assert kinds["name"] >= 20
    assert b"INSERT INTO" in scan.places["pg_dump"] or b"COPY public.customers" in scan.places["pg_dump"]
    assert any(len(blob) > 10_000 for place, blob in scan.places.items() if place.startswith("topic "))


def test_pg_dump_holds_no_identifier_in_clear(scan: Scan) -> None:
    assert _found(scan, "pg_dump") == []



# Every topic the backbone creates, by its name after the prefix (connectors.platform.topics.topic_specs).
TOPIC_SUFFIXES = (*(f"events.{ch}" for ch in CHANNELS), "dlq", "accepted", "customer-views", "customer-events",
                  "identity", "loyalty", "alerts.dormancy", "alerts.churn", "resolved",
                  "identity-state", "profile-state")


@pytest.mark.parametrize("suffix", TOPIC_SUFFIXES)
def test_topic_holds_no_identifier_in_clear(scan: Scan, pipeline: Pipeline, suffix: str) -> None:
    place = f"topic {pipeline.settings.topic(suffix)}"
    assert place in scan.places, f"{place} exists"
    assert _found(scan, place) == [], f"{place} holds clear identifiers"


def test_no_other_topic_of_the_prefix_holds_an_identifier_in_clear(scan: Scan, pipeline: Pipeline) -> None:
    known = {f"topic {pipeline.settings.topic(suffix)}" for suffix in TOPIC_SUFFIXES}
    others = sorted(set(scan.places) - known - {"pg_dump"})
    assert {place: _found(scan, place) for place in others} == {place: [] for place in others}


def test_only_the_channel_topics_have_a_short_retention(pipeline: Pipeline) -> None:
    """The topics as Kafka holds them: where clear values may land, records are kept for the setting's days."""
    settings = pipeline.settings
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        names = [settings.topic(suffix) for suffix in TOPIC_SUFFIXES]
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])["topic"]
    finally:
        admin.close()
    retention = {name: configs[name]["retention.ms"]["value"] for name in names}
    channels = {event_topic(settings, ch) for ch in CHANNELS}
    assert {name: ms for name, ms in retention.items() if name in channels} == \
        dict.fromkeys(channels, str(int(settings.channel_retention_days * 86_400_000)))
    assert {name: ms for name, ms in retention.items() if name not in channels} == \
        dict.fromkeys(set(names) - channels, "-1")


def test_a_direct_producer_s_clear_identifiers_go_no_further_than_the_channel_topics(
        scan: Scan, pipeline: Pipeline) -> None:
    """Ingest seals what a client not ours wrote in clear: not on accepted nor any later topic, not in PostgreSQL."""
    channels = {f"topic {event_topic(pipeline.settings, ch)}" for ch in CHANNELS}
    kinds = Counter(kind for kind, _ in scan.direct)
    assert kinds["card"] >= 10 and kinds["email"] >= 10 and kinds["phone"] >= 10 and kinds["customer_no"] >= 10
    assert kinds["name"] >= 10
    on_channels = set().union(*(_found(scan, place, scan.direct) for place in channels))
    assert on_channels == {_name(kind, display) for kind, display in scan.direct}, \
        "the direct producer wrote every identifier in clear to the channel topics (the scan is not vacuous)"
    beyond = sorted(set(scan.places) - channels)
    assert "pg_dump" in beyond and f"topic {pipeline.settings.topic('accepted')}" in beyond
    assert {place: _found(scan, place, scan.direct) for place in beyond} == {place: [] for place in beyond}


def test_a_direct_producer_s_events_reach_the_read_model(scan: Scan, pipeline: Pipeline) -> None:
    """Sealing keeps the events: every one is an interaction, every customer number on a card."""
    settings = pipeline.settings
    assert scan.direct_ids <= interaction_ids(settings)
    with psycopg.connect(settings.pg_conninfo()) as conn:
        on_cards = {row[0] for row in conn.execute(
            "SELECT i.key FROM customer_identifiers i JOIN customers c USING (customer_id) WHERE i.key = ANY(%s)",
            (sorted(scan.direct_keys),))}
    assert on_cards == scan.direct_keys, "every customer number of the direct population is on a customer's card"
