"""The alerts' wire on the real stack: the alert topics, the PostgreSQL projection, the tail, the clock.

Everything here runs under a topic prefix and a database of its own (derived
from the session's), so the alerts and ticks written here never reach the
backbone's topics or tables that other tests read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from psycopg.rows import dict_row

from connectors.operations.alerts import format_alert
from connectors.operations.clock import publish_tick, run_clock, tick_topic
from connectors.platform.alert_wire import AlertSerde, alert_topic
from connectors.platform.control import TICK_HEADER, TICK_VALUE
from connectors.platform.registry import RegistryClient
from projections.alerts import AlertsProjection
from projections.catalog import PROJECTION_TOPICS
from projections.run import all_projections
from projections.writer import Record, run_projection, stored_offsets, write_batch
from tests.fix_stack import REPO, scoped, settings_env
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wire(settings: Settings) -> Iterator[Settings]:
    """Settings with a topic prefix and a database of this module's own."""
    with scoped(settings, f"{settings.pg_database}_alerts", f"{settings.topic_prefix}-alerts") as own:
        yield own


@pytest.fixture(scope="module")
def serde(wire: Settings) -> Iterator[AlertSerde]:
    with RegistryClient(wire.registry_url) as registry:
        yield AlertSerde(registry)


def alert(customer: str, kind: str, state: str, at: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "alert_id": f"{customer}/{kind}/1/2026-01-03T10:00:00.000Z/{state}",
        "kind": kind, "state": state, "customer_id": customer, "at": at,
        "since": "2026-01-03T10:00:00.000Z", "raised_at": "2026-01-04T10:00:00.000Z", "severity": "medium",
        "reasons": [{"code": "cancel_request", "text": "cancel request 2 days ago",
                     "evidence": {"event_ids": [f"case-{customer}"], "days_ago": 2}}],
        "segment": "gold", "value_minor": 123456, "contactable": {"email": True, "sms": False},
    }
    doc.update(extra)
    return doc


ALERTS = [
    alert("cus_a", "churn", "raised", "2026-01-04T10:00:00.000Z"),
    alert("cus_a", "dormancy", "raised", "2026-01-04T11:00:00.000Z", segment="platinum", reasons=[],
          contactable={}),
    alert("cus_b", "churn", "raised", "2026-01-04T12:00:00.000Z", segment="lead", value_minor=-250),
    alert("cus_a", "churn", "escalated", "2026-01-05T10:00:00.000Z", severity="high"),
    alert("cus_b", "churn", "resolved", "2026-01-06T10:00:00.000Z", reasons=[], segment="lead", value_minor=-250),
]
"""In publishing order: cus_a's churn escalates, cus_b's churn resolves."""


def publish(settings: Settings, serde: AlertSerde, docs: list[dict[str, Any]]) -> list[Record]:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        records = []
        for doc in docs:
            topic = alert_topic(settings, doc["kind"])
            key, value = doc["customer_id"].encode(), serde.serialize(doc)
            metadata = producer.send(topic, key=key, value=value).get(timeout=30)
            records.append(Record(topic, metadata.partition, metadata.offset, key, value))
        return records
    finally:
        producer.close()


@pytest.fixture(scope="module")
def published(wire: Settings, serde: AlertSerde) -> list[Record]:
    return publish(wire, serde, ALERTS)


def rows(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    with psycopg.connect(settings.pg_conninfo()) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM alerts")
        return {(r["customer_id"], r["kind"]): r for r in cur.fetchall()}


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the projection --------------------------------------------------------------------


def test_projection_keeps_the_latest_transition_per_customer_and_kind(
        wire: Settings, serde: AlertSerde, published: list[Record]) -> None:
    projection = AlertsProjection(wire, serde)
    assert projection.name in PROJECTION_TOPICS
    assert [wire.topic(t) for t in PROJECTION_TOPICS["alerts"]] == projection.topics
    assert any(isinstance(p, AlertsProjection) for p in all_projections(wire))
    stop = threading.Event()
    writer = threading.Thread(target=run_projection, args=(wire, projection, stop), kwargs={"poll_ms": 100})
    writer.start()
    try:
        ends: dict[tuple[str, int], int] = {}
        for record in published:
            ends[(record.topic, record.partition)] = max(ends.get((record.topic, record.partition), 0),
                                                         record.offset + 1)

        def caught_up() -> bool:
            with psycopg.connect(wire.pg_conninfo()) as conn:
                stored = stored_offsets(conn, "alerts")
            return all(stored.get(tp, 0) >= end for tp, end in ends.items())

        wait_until(caught_up, 60, "the alerts projection to catch up")
    finally:
        stop.set()
        writer.join(30)
    got = rows(wire)
    assert set(got) == {("cus_a", "churn"), ("cus_a", "dormancy"), ("cus_b", "churn")}
    latest = {(d["customer_id"], d["kind"]): d for d in ALERTS}  # the last of each in publishing order
    by_key = {(d["customer_id"], d["kind"]): r for d, r in zip(ALERTS, published, strict=True)}
    for key, doc in latest.items():
        row = got[key]
        assert {k: row[k] for k in ("alert_id", "state", "severity", "segment", "value_minor",
                                    "contactable", "reasons")} == {k: doc[k] for k in (
            "alert_id", "state", "severity", "segment", "value_minor", "contactable", "reasons")}
        assert (iso(row["at"]), iso(row["since"]), iso(row["raised_at"])) == (doc["at"], doc["since"],
                                                                             doc["raised_at"])
        assert (row["source_topic"], row["source_partition"], row["source_offset"]) == (
            by_key[key].topic, by_key[key].partition, by_key[key].offset)
    assert got[("cus_a", "churn")]["state"] == "escalated" and got[("cus_b", "churn")]["state"] == "resolved"
    with psycopg.connect(wire.pg_conninfo()) as conn:
        active = conn.execute("SELECT customer_id, kind FROM alerts WHERE state <> 'resolved' "
                              "ORDER BY at DESC").fetchall()
        conn.execute("SET enable_seqscan = off")  # three rows: make the planner show it can use the index
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT * FROM alerts WHERE state <> 'resolved' ORDER BY at DESC"))
    assert active == [("cus_a", "churn"), ("cus_a", "dormancy")]
    assert "alerts_active" in plan


def test_a_stale_or_replayed_alert_never_overwrites_a_newer_one(
        wire: Settings, serde: AlertSerde, published: list[Record]) -> None:
    projection = AlertsProjection(wire, serde)
    with psycopg.connect(wire.pg_conninfo()) as conn:
        write_batch(conn, projection, published)  # make sure every row is there (order-independent test)
        before = rows(wire)
        # Replays: the old "raised" alone, then the whole log backwards in one batch.
        write_batch(conn, projection, [published[0], published[2]])
        write_batch(conn, projection, published[::-1])
    after = rows(wire)
    for key, row in before.items():
        assert {k: v for k, v in after[key].items() if k != "updated_at"} == {
            k: v for k, v in row.items() if k != "updated_at"}
        assert after[key]["updated_at"] == row["updated_at"]  # not even touched


def test_a_new_transition_replaces_the_row_and_bad_bytes_are_skipped(
        wire: Settings, serde: AlertSerde, published: list[Record]) -> None:
    projection = AlertsProjection(wire, serde)
    fresh = alert("cus_b", "churn", "raised", "2026-02-01T10:00:00.000Z", segment="iron",
                  alert_id="cus_b/churn/2/2026-02-01T10:00:00.000Z/raised")
    [record] = publish(wire, serde, [fresh])
    poison = Record(record.topic, record.partition, record.offset + 1, b"cus_b", b"\x00garbage")
    with psycopg.connect(wire.pg_conninfo()) as conn:
        write_batch(conn, projection, published)
        write_batch(conn, projection, [record, poison])
    row = rows(wire)[("cus_b", "churn")]
    assert (row["alert_id"], row["state"], row["segment"], row["source_offset"]) == (
        fresh["alert_id"], "raised", "iron", record.offset)


# --- the tail ------------------------------------------------------------------------------


def tail(settings: Settings, *args: str, timeout_s: float = 60) -> list[str]:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "touchpoint", "alerts", "tail", *args], env=settings_env(settings), cwd=REPO,
        capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def on_alert_topics(settings: Settings) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(alert_topic(settings, kind), p) for kind in ("dormancy", "churn")
               for p in sorted(consumer.partitions_for_topic(alert_topic(settings, kind)) or ())]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def test_tail_from_the_beginning_as_json(wire: Settings, published: list[Record]) -> None:
    total = on_alert_topics(wire)  # ALERTS and whatever the other tests here published
    lines = tail(wire, "--from-beginning", "--json", "--max", str(total), "--timeout", "45")
    assert len(lines) == total
    docs = [json.loads(line) for line in lines]
    assert all(d in docs for d in ALERTS)
    # One customer's alerts of one kind keep their order; across partitions any interleaving is fine.
    for key in {(d["customer_id"], d["kind"]) for d in ALERTS}:
        mine = [d for d in docs if (d["customer_id"], d["kind"]) == key and d in ALERTS]
        assert mine == [d for d in ALERTS if (d["customer_id"], d["kind"]) == key]


def test_tail_filters_and_prints_human_lines(wire: Settings, published: list[Record]) -> None:
    lines = tail(wire, "--from-beginning", "--kind", "churn", "--segment", "lead", "--timeout", "8")
    expected = [format_alert(d) for d in ALERTS if d["kind"] == "churn" and d["segment"] == "lead"]
    assert lines == expected
    assert lines[0].startswith("2026-01-04T12:00:00.000Z RAISED    churn    medium cus_b (lead, -2.50) "
                               "contactable: email — cancel_request: cancel request 2 days ago")


def test_tail_starts_at_the_end(wire: Settings, serde: AlertSerde, published: list[Record]) -> None:
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "touchpoint", "alerts", "tail", "--json", "--max", "1", "--timeout", "60"],
        env=settings_env(wire), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The tail needs a moment to start; keep publishing new alerts until it has printed one of them.
        n = 0
        while proc.poll() is None and n < 100:
            publish(wire, serde, [alert("cus_new", "dormancy", "raised", f"2026-03-01T00:00:{n % 60:02d}.000Z",
                                        alert_id=f"cus_new/dormancy/new/{n}")])
            n += 1
            time.sleep(0.3)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    [doc] = [json.loads(line) for line in out.splitlines()]
    assert doc["customer_id"] == "cus_new"  # nothing from before it started


def test_tail_refuses_an_unknown_kind(wire: Settings) -> None:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "touchpoint", "alerts", "tail", "--kind", "fraud", "--timeout", "1"],
        env=settings_env(wire), cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "fraud" in done.stderr


# --- the clock -----------------------------------------------------------------------------


def read_accepted(settings: Settings, offset: int, count: int = 1) -> list[Any]:
    tp = TopicPartition(tick_topic(settings), 0)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             isolation_level="read_committed")
    try:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            got += consumer.poll(timeout_ms=1000).get(tp, [])
        return got[:count]
    finally:
        consumer.close()


def test_publish_tick_lands_in_accepted_with_its_header(wire: Settings) -> None:
    at = datetime(2026, 1, 5, 10, 0, 0, 123_456, tzinfo=UTC)
    offset = publish_tick(wire, at)
    [message] = read_accepted(wire, offset)
    assert (message.topic, message.partition, message.offset) == (wire.topic("accepted"), 0, offset)
    assert message.key == b"clock"
    assert message.value == b'{"tick":"2026-01-05T10:00:00.123Z"}'
    assert [(k, v) for k, v in message.headers] == [(TICK_HEADER, TICK_VALUE)] == [("touchpoint-record", b"tick")]


def test_clock_command_once_at_an_instant(wire: Settings) -> None:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "touchpoint", "clock", "--at", "2026-01-31T00:00:00Z"], env=settings_env(wire),
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"tick 2026-01-31T00:00:00.000Z published to {wire.topic('accepted')} at offset ")
    offset = int(done.stdout.split()[-1])
    [message] = read_accepted(wire, offset)
    assert json.loads(message.value) == {"tick": "2026-01-31T00:00:00.000Z"}


def test_run_clock_ticks_the_wall_clock_until_stopped(wire: Settings) -> None:
    first = publish_tick(wire, datetime(2026, 1, 1, tzinfo=UTC)) + 1
    stop = threading.Event()
    before = datetime.now(UTC)
    result: list[int] = []
    clock = threading.Thread(target=lambda: result.append(run_clock(wire, 0.3, stop)))
    clock.start()
    time.sleep(1.5)
    stop.set()
    clock.join(30)
    after = datetime.now(UTC)
    assert not clock.is_alive() and result and result[0] >= 3
    ticks = [json.loads(m.value)["tick"] for m in read_accepted(wire, first, result[0])]
    assert len(ticks) == result[0]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    assert iso(before) <= ticks[0] and ticks[-1] <= iso(after)
