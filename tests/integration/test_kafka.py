"""The real broker speaks both Python clients, transactions included."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer

from connectors.platform.topics import TopicSpec, ensure_topics
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(settings: Settings) -> str:
    name = settings.topic(f"itest.{uuid.uuid4().hex[:8]}")
    assert ensure_topics(settings, [TopicSpec(name, 1)]) == [name]
    return name


def consume_all(settings: Settings, topic: str, expected: int, isolation: str = "read_uncommitted") -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, isolation_level=isolation, consumer_timeout_ms=5000)
    try:
        values = []
        for message in consumer:
            values.append(message.value)
            if len(values) >= expected:
                break
        return values
    finally:
        consumer.close()


def test_kafka_python_round_trip(settings: Settings, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        metadata = producer.send(topic, key=b"k", value=b"hello").get(timeout=30)
    finally:
        producer.close()
    assert metadata.offset == 0
    assert consume_all(settings, topic, 1) == [b"hello"]


async def test_aiokafka_round_trip(settings: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"one", key=b"k")
        await producer.send_and_wait(topic, b"two", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        got: list[bytes] = []
        while len(got) < 2:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "no message within 5 s"
            got += [m.value for messages in batch.values() for m in messages]
    finally:
        await consumer.stop()
    assert got == [b"one", b"two"]


async def test_transactions_committed_visible_aborted_not(settings: Settings, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                transactional_id=f"itest-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed")
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed-again")
    finally:
        await producer.stop()
    assert consume_all(settings, topic, 2, isolation="read_committed") == [b"committed", b"committed-again"]
    # A read_uncommitted reader does see the aborted record: the broker really wrote it.
    assert b"aborted" in consume_all(settings, topic, 3, isolation="read_uncommitted")
