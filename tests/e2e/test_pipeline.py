"""Events through the real broker, a Faust worker and the projection writer into PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer

from connectors.topics import event_topic
from tests.fix_stack import spawn_touchpoint, stop_process
from touchpoint.demo import sample_events
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


def wait_until(check, timeout: float, what: str, procs=()):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for proc in procs:
            assert proc.poll() is None, f"child exited with {proc.returncode} while waiting for {what}"
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def publish(settings: Settings, events: list[dict[str, object]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        for event in events:
            producer.send(event_topic(settings, str(event["channel"])), value=json.dumps(event).encode()).get(30)
    finally:
        producer.close()


def test_good_events_become_rows_bad_ones_dead_lettered(settings: Settings, tmp_path: Path) -> None:
    events = sample_events("e2e", datetime(2026, 11, 1, tzinfo=UTC))
    garbage = b"\x00\x01 not json at all"
    worker = spawn_touchpoint(settings, "worker", log=tmp_path / "worker.log")
    writer = spawn_touchpoint(settings, "project", log=tmp_path / "project.log")
    try:
        publish(settings, events)
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        producer.send(event_topic(settings, "web"), value=garbage).get(30)
        producer.close()
        # The same events published twice change nothing downstream.
        publish(settings, events)
        good_ids = sorted(str(e["event_id"]) for e in events[:-1])

        def rows() -> list[tuple[str, str, str]]:
            with psycopg.connect(settings.pg_conninfo()) as conn:
                return conn.execute("SELECT event_id, type, channel FROM interactions ORDER BY event_id").fetchall()

        found = wait_until(lambda: len(rows()) >= len(good_ids) and rows(), 90, "rows", (worker, writer))
        assert [r[0] for r in found] == good_ids
        assert {r[2] for r in found} == {"web", "branch", "phone", "email", "sms"}
    finally:
        assert stop_process(writer) == 0, (tmp_path / "project.log").read_text()[-3000:]
        stop_process(worker)

    consumer = KafkaConsumer(settings.topic("dlq"), bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=5000)
    try:
        dead = [(m.value, dict(m.headers)) for m in consumer]
    finally:
        consumer.close()
    reasons = {value: headers["touchpoint.dlq.reason"].decode() for value, headers in dead}
    assert garbage in reasons and reasons[garbage].startswith("not JSON")
    bad = json.dumps(events[-1]).encode()
    assert "identifiers" in reasons[bad]
    headers = dict(dead[0][1])
    assert headers["touchpoint.dlq.topic"].decode().startswith(settings.topic("events."))
    assert int(headers["touchpoint.dlq.offset"]) >= 0
    # Two publications of the bad event, one of garbage: nothing silently dropped.
    assert len(dead) == 3
