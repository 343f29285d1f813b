"""Identity's history on the real broker: events of a transactional log read again by offset, the latest from memory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

import streams.history
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from connectors.platform.topics import TopicSpec, ensure_topics
from streams.history import LogHistory
from touchpoint.contract.models import ContractViolation, validate_event
from touchpoint.generate import generate
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def serde(settings: Settings) -> Iterator[EventSerde]:
    with RegistryClient(settings.registry_url) as registry:
        yield EventSerde(registry)


@pytest.fixture(scope="module")
def log(settings: Settings, serde: EventSerde) -> tuple[str, dict[int, bytes]]:
    """A one-partition topic of events written in three transactions, as ingest writes ``accepted``: offset ->
    value (each commit marker takes an offset of its own)."""
    topic = settings.topic(f"itest.history.{uuid.uuid4().hex[:8]}")
    assert ensure_topics(settings, [TopicSpec(topic, 1)]) == [topic]
    values = []
    for doc in generate(8, 30, 5):
        try:
            values.append(serde.serialize(validate_event(doc, None)))
        except ContractViolation:
            continue  # the generator's deliberately bad events
    values = values[:30]
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": topic})
    producer.init_transactions()
    offsets: dict[int, bytes] = {}
    delivered: list[tuple[int | None, bytes | None]] = []
    for chunk in (values[:10], values[10:20], values[20:]):
        producer.begin_transaction()
        for value in chunk:
            producer.produce(topic, value, partition=0,
                             on_delivery=lambda err, msg: delivered.append((msg.offset(), msg.value())))
        producer.commit_transaction()
    producer.flush()
    offsets.update((offset, value) for offset, value in delivered if offset is not None and value is not None)
    assert len(offsets) == 30 and max(offsets) == 31  # two markers among the first 32 offsets
    return topic, offsets


def test_events_are_read_again_by_offset_in_the_order_asked_with_their_bytes(
        settings: Settings, serde: EventSerde, log: tuple[str, dict[int, bytes]]) -> None:
    topic, values = log
    history = LogHistory(settings, topic, serde)
    try:
        wanted = [sorted(values)[-1], sorted(values)[3], sorted(values)[11], sorted(values)[3]]
        events = history(wanted)
        assert [e.event_id for e in events] == [serde.read_checked(values[o]).event_id for o in wanted]
        assert history.raw == {o: values[o] for o in wanted}
    finally:
        history.close()


def test_the_latest_messages_kept_are_served_from_memory_and_older_ones_from_the_log(
        settings: Settings, serde: EventSerde, log: tuple[str, dict[int, bytes]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    topic, values = log
    offsets = sorted(values)
    # Each offset kept with the bytes of the first event: what comes back tells memory from the log.
    stand_in = values[offsets[0]]
    monkeypatch.setattr(streams.history, "KEPT_BYTES", 3 * len(stand_in))
    history = LogHistory(settings, topic, serde)
    try:
        for offset in offsets[:10]:
            history.keep(offset, stand_in)
        history.keep(offsets[9], values[offsets[9]])  # kept already: the first bytes stay
        history(offsets[:10])
        assert history.raw == {o: (stand_in if o in offsets[7:10] else values[o]) for o in offsets[:10]}
    finally:
        history.close()


def test_an_offset_with_no_event_is_refused_with_a_reason(
        settings: Settings, serde: EventSerde, log: tuple[str, dict[int, bytes]]) -> None:
    topic, values = log
    marker = next(o for o in range(max(values)) if o not in values)  # a commit marker's offset
    history = LogHistory(settings, topic, serde)
    try:
        with pytest.raises(LookupError, match="not in the log"):
            history([marker])
    finally:
        history.close()
