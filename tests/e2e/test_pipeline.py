"""Events through the producer library, the real broker, a Faust worker and the projection writer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from subprocess import Popen
from typing import TypeVar

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer

from backbone.demo import BAD_BYTES, sample_events
from connectors.intake.producer import Delivered, EventProducer
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from connectors.platform.topics import event_topic
from tests.fix_stack import spawn_touchpoint, stop_process
from touchpoint.contract import encode, to_avro_record, validate_event
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration
T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str, procs: tuple[Popen[bytes], ...] = ()) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for proc in procs:
            assert proc.poll() is None, f"child exited with {proc.returncode} while waiting for {what}"
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def dead_letters(settings: Settings) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = KafkaConsumer(settings.topic("dlq"), bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        return [(m.value, dict(m.headers)) for m in consumer]
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Popen[bytes], ...]]:
    """A Faust worker and the projection writer, as child processes."""
    logs = tmp_path_factory.mktemp("pipeline")
    worker = spawn_touchpoint(settings, "worker", log=logs / "worker.log")
    writer = spawn_touchpoint(settings, "project", log=logs / "project.log")
    yield worker, writer
    assert stop_process(writer) == 0, (logs / "project.log").read_text()[-3000:]
    stop_process(worker)


def interaction_ids(settings: Settings) -> set[str]:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM interactions")}


async def test_aborted_transactions_are_never_processed(settings: Settings,
                                                        pipeline: tuple[Popen[bytes], ...]) -> None:
    now = datetime.now(UTC)
    aborted, committed = (sample_events(tag, now)[0] for tag in ("aborted", "committed"))
    with RegistryClient(settings.registry_url) as registry:
        serde = EventSerde(registry)
        payloads = [serde.serialize(validate_event(e, now)) for e in (aborted, committed)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, transactional_id="e2e-aborter")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(event_topic(settings, "web"), payloads[0])
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(event_topic(settings, "web"), payloads[1])
    finally:
        await producer.stop()
    wait_until(lambda: committed["event_id"] in interaction_ids(settings), 90, "the committed event", pipeline)
    assert aborted["event_id"] not in interaction_ids(settings)


def test_good_events_become_rows_bad_ones_dead_lettered(settings: Settings,
                                                        pipeline: tuple[Popen[bytes], ...]) -> None:
    now = datetime.now(UTC)
    events = sample_events("e2e", now)
    # Valid Avro that breaks the contract: written by a system that skipped validation.
    with RegistryClient(settings.registry_url) as registry:
        serde = EventSerde(registry)
        record = to_avro_record(validate_event(events[1], now))
        record["payload"][1]["total_minor"] = -5
        negative_total = encode(serde.writer_id, record)

    with EventProducer(settings) as producer:
        results = producer.publish(events, now)
        assert all(isinstance(r, Delivered) for r in results), results
        # The same events published twice change nothing downstream.
        assert all(isinstance(r, Delivered) for r in producer.publish(events, now))
    raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for value in (BAD_BYTES, negative_total, b"", BAD_BYTES[:3]):
        raw.send(event_topic(settings, "branch"), value=value).get(30)
    raw.close()

    def rows() -> list[tuple[str, str, str]]:  # each event once: the primary key guarantees no doubles
        with psycopg.connect(settings.pg_conninfo()) as conn:
            return conn.execute("SELECT event_id, type, channel FROM interactions ORDER BY event_id").fetchall()

    ids = {str(e["event_id"]) for e in events}
    found = wait_until(lambda: ids <= {r[0] for r in rows()} and rows(), 90, "rows", pipeline)
    assert {r[2] for r in found if r[0] in ids} == {"web", "branch", "phone", "email", "sms"}
    branch = event_topic(settings, "branch").encode()

    def ours() -> list[tuple[bytes, dict[str, bytes]]]:
        # Other tests of the session dead-letter into the same topic from other sources.
        return [(v, h) for v, h in dead_letters(settings) if h.get("touchpoint.dlq.topic") == branch]

    dead = wait_until(lambda: len(ours()) >= 4 and ours(), 60, "dead letters", pipeline)

    reasons = {value: headers["touchpoint.dlq.reason"].decode() for value, headers in dead}
    assert len(dead) == 4, reasons  # nothing silently dropped, nothing twice
    assert reasons[BAD_BYTES].startswith("undecodable: unknown schema id")
    assert reasons[negative_total].startswith("contract: payload.total_minor")
    assert reasons[b""].startswith("undecodable")
    assert reasons[BAD_BYTES[:3]].startswith("undecodable")
    for _, headers in dead:
        assert headers["touchpoint.dlq.topic"] == event_topic(settings, "branch").encode()
        assert int(headers["touchpoint.dlq.offset"]) >= 0
