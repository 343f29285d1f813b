"""Events through the producer library, the real broker, a Faust worker and the projection writer."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from subprocess import Popen
from typing import TypeVar

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer

from connectors.producer import Delivered, EventProducer
from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from connectors.topics import event_topic
from tests.fix_stack import spawn_touchpoint, stop_process
from touchpoint.contract import encode, to_avro_record, validate_event
from touchpoint.demo import BAD_BYTES, sample_events
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


def test_good_events_become_rows_bad_ones_dead_lettered(settings: Settings, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    events = sample_events("e2e", now)
    # Valid Avro that breaks the contract: written by a system that skipped validation.
    with RegistryClient(settings.registry_url) as registry:
        serde = EventSerde(registry)
        record = to_avro_record(validate_event(events[1], now))
        record["payload"][1]["total_minor"] = -5
        negative_total = encode(serde.writer_id, record)

    worker = spawn_touchpoint(settings, "worker", log=tmp_path / "worker.log")
    writer = spawn_touchpoint(settings, "project", log=tmp_path / "project.log")
    try:
        with EventProducer(settings) as producer:
            results = producer.publish(events, now)
            assert all(isinstance(r, Delivered) for r in results), results
            # The same events published twice change nothing downstream.
            assert all(isinstance(r, Delivered) for r in producer.publish(events, now))
        raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        for value in (BAD_BYTES, negative_total, b"", BAD_BYTES[:3]):
            raw.send(event_topic(settings, "branch"), value=value).get(30)
        raw.close()

        def rows() -> list[tuple[str, str, str]]:
            with psycopg.connect(settings.pg_conninfo()) as conn:
                return conn.execute("SELECT event_id, type, channel FROM interactions ORDER BY event_id").fetchall()

        found = wait_until(lambda: len(rows()) >= len(events) and rows(), 90, "rows", (worker, writer))
        assert [r[0] for r in found] == sorted(str(e["event_id"]) for e in events)
        assert {r[2] for r in found} == {"web", "branch", "phone", "email", "sms"}
        dead = wait_until(lambda: len(dead_letters(settings)) >= 4 and dead_letters(settings), 60, "dead letters",
                          (worker, writer))
    finally:
        assert stop_process(writer) == 0, (tmp_path / "project.log").read_text()[-3000:]
        stop_process(worker)

    reasons = {value: headers["touchpoint.dlq.reason"].decode() for value, headers in dead}
    assert len(dead) == 4, reasons  # nothing silently dropped, nothing twice
    assert reasons[BAD_BYTES].startswith("undecodable: unknown schema id")
    assert reasons[negative_total].startswith("contract: payload.total_minor")
    assert reasons[b""].startswith("undecodable")
    assert reasons[BAD_BYTES[:3]].startswith("undecodable")
    for _, headers in dead:
        assert headers["touchpoint.dlq.topic"] == event_topic(settings, "branch").encode()
        assert int(headers["touchpoint.dlq.offset"]) >= 0
