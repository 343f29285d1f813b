"""A generated population through the real broker and Faust worker equals the fold of its log.

The oracle is the pure core itself: the worker's input log
(``touchpoint.accepted``) folded offline with the same Folder must give
exactly the cards, aliases and loyalty ledger the projections wrote to
PostgreSQL and the alerts on the alert topics (ticks from the clock ride in
the same log), also when the worker is killed with SIGKILL mid-stream and
restarted (no point lost or doubled, no alert missing).
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.alerts import AlertSerde
from connectors.clock import publish_tick
from connectors.producer import Delivered, EventProducer
from connectors.registry import RegistryClient
from connectors.serde import EventSerde
from streams.customers import CustomerStage
from tests.e2e.test_pipeline import wait_until
from tests.fix_stack import spawn_touchpoint, stop_process
from touchpoint.core.profile import render
from touchpoint.generate import generate
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


def end_offset(settings: Settings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def committed(settings: Settings) -> int:
    """The customers agent's committed offset on ``accepted`` (its group is the app id)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.topic_prefix,
                             enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(settings.topic("accepted"), 0)) or 0
    finally:
        consumer.close()


def projected_positions(settings: Settings, projection: str = "customers",
                        topic: str = "customer-views") -> dict[int, int]:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        rows = conn.execute("SELECT partition, next_offset FROM projection_offsets "
                            "WHERE projection = %s AND topic = %s", (projection, settings.topic(topic)))
        return dict(rows.fetchall())


def oracle(settings: Settings) -> CustomerStage:
    """Fold the worker's whole input log offline, with the worker's own stage."""
    with RegistryClient(settings.registry_url) as registry:
        stage = CustomerStage(settings, EventSerde(registry))
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed",
                                 enable_auto_commit=False, consumer_timeout_ms=3000)
        tp = TopicPartition(settings.topic("accepted"), 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        try:
            for message in consumer:
                stage.add_message(message.value, message.headers)
                if message.offset + 1 >= end:
                    break
        finally:
            consumer.close()
    return stage


def alerts_on_topics(settings: Settings) -> list[dict[str, object]]:
    """Every alert on the two alert topics, per partition in offset order."""
    found = []
    with RegistryClient(settings.registry_url) as registry:
        serde = AlertSerde(registry)
        for kind in ("dormancy", "churn"):
            topic = settings.topic(f"alerts.{kind}")
            consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed",
                                     enable_auto_commit=False, consumer_timeout_ms=3000)
            try:
                partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
                consumer.assign(partitions)
                consumer.seek_to_beginning(*partitions)
                found += [serde.deserialize(message.value) for message in consumer]
            finally:
                consumer.close()
    return found


def test_worker_equals_fold_of_its_log_across_a_kill(settings: Settings, tmp_path: Path) -> None:
    events = [e for e in generate(customers=150, days=60, seed=21) if e["event_id"].startswith("ev-")]
    half = len(events) // 2

    def latest(part: list[dict[str, object]]) -> datetime:
        return max(datetime.fromisoformat(str(e["occurred_at"]).replace("Z", "+00:00")) for e in part)
    mid_tick, final_tick = latest(events[:half]) + timedelta(days=1), latest(events) + timedelta(days=120)
    worker = spawn_touchpoint(settings, "worker", log=tmp_path / "worker-1.log")
    writer = spawn_touchpoint(settings, "project", log=tmp_path / "project.log")
    try:
        accepted_before = end_offset(settings, settings.topic("accepted"))[0]
        with EventProducer(settings) as producer:
            assert all(isinstance(r, Delivered) for r in producer.publish(events[:half], datetime.now(UTC)))
            publish_tick(settings, mid_tick)
            # The worker holds the first half in memory only; kill it without a chance to leave.
            wait_until(lambda: committed(settings) >= accepted_before + half + 1, 90, "the first half", (worker,))
            # ... and in its state table, so the restart exercises restoring it (not only the log).
            wait_until(lambda: end_offset(settings, settings.topic("customer-state"))[0] > 0, 30,
                       "the state table's first write", (worker,))
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            killed_at = committed(settings)
            assert all(isinstance(r, Delivered) for r in producer.publish(events[half:], datetime.now(UTC)))
        publish_tick(settings, final_tick)  # months later: the lapsed become dormant
        worker = spawn_touchpoint(settings, "worker", log=tmp_path / "worker-2.log")
        wait_until(lambda: "customer state rebuilt" in (tmp_path / "worker-2.log").read_text(), 90,
                   "the restarted worker to rebuild its state", (worker,))
        rebuilt = re.search(r"restored=(\d+) .* replayed=(\d+) ", (tmp_path / "worker-2.log").read_text())
        assert rebuilt, "the restarted worker reports how it rebuilt its state"
        restored, replayed = map(int, rebuilt.groups())
        assert restored > 50 and replayed < half, f"the state table spared the restart most of the log: {rebuilt[0]}"

        def caught_up() -> bool:
            accepted_end = end_offset(settings, settings.topic("accepted"))[0]
            caught = committed(settings) >= accepted_end > killed_at
            for topic, projection in (("customer-views", "customers"), ("loyalty", "loyalty"),
                                      ("alerts.dormancy", "alerts"), ("alerts.churn", "alerts")):
                positions = projected_positions(settings, projection, topic)
                caught = caught and all(positions.get(p, 0) >= offset
                                        for p, offset in end_offset(settings, settings.topic(topic)).items())
            return caught

        wait_until(caught_up, 180, "the worker and the projection to catch up", (worker, writer))
    finally:
        stop_process(worker)
        stop_process(writer)

    expected = oracle(settings)
    expected_alerts = [alert for alert, _ in expected.folder.drain_alerts()]
    published = alerts_on_topics(settings)
    segment = expected.folder.config.segment
    with psycopg.connect(settings.pg_conninfo()) as conn:
        rows = {cid: (view, as_of) for cid, view, as_of in conn.execute(
            "SELECT customer_id, view, as_of FROM customers")}
        aliases = dict(conn.execute("SELECT alias, survivor FROM customer_aliases").fetchall())
        ledger = conn.execute("SELECT entry_id, customer_id, points FROM loyalty_ledger").fetchall()
        projected_alerts = {(cid, kind): alert_id for cid, kind, alert_id in conn.execute(
            "SELECT customer_id, kind, alert_id FROM alerts")}
    assert set(rows) == set(expected.folder.views), "the same customers"
    for customer_id, (view, as_of) in rows.items():
        assert view == render(expected.folder.views[customer_id], as_of, segment), customer_id
    merged = {alias for view in expected.folder.views.values() for alias in view.aliases}
    assert set(aliases) == merged

    # The ledger: every entry the oracle issued, once, on the customer (or an alias of it) it belongs to.
    expected_entries = {entry.id: (customer_id, entry.points) for customer_id, view in expected.folder.views.items()
                        for entry in view.loyalty.entries.values()}
    assert len(ledger) == len({entry_id for entry_id, _, _ in ledger}) == len(expected_entries)
    def survivor(customer_id: str) -> str:
        while customer_id in aliases:  # a merge of a merge is a chain of aliases
            customer_id = aliases[customer_id]
        return customer_id

    for entry_id, customer_id, points in ledger:
        assert expected_entries[entry_id] == (survivor(customer_id), points), entry_id
    for customer_id in rows:
        owned = [points for _, cid, points in ledger if survivor(cid) == customer_id]
        assert sum(owned) == sum(e.points for e in expected.folder.views[customer_id].loyalty.entries.values())
    assert len(rows) > 100 and merged, "the population is big enough to mean something"
    # Alerts: the same transitions as the replay decided (a re-emission after the kill repeats an id,
    # which subscribers deduplicate on), and the latest per customer and kind in PostgreSQL.
    assert {a["alert_id"] for a in published} == {a.alert_id for a in expected_alerts}
    last = {(a.customer_id, a.kind): a.alert_id for a in expected_alerts}
    assert projected_alerts == last
    raised = [a for a in expected_alerts if a.kind == "dormancy" and a.state == "raised"]
    assert len(raised) > 50, "months of silence after the history make many customers dormant"
    earned = sum(points for _, _, points in ledger if points > 0)
    assert earned > 0 and any(points < 0 for _, _, points in ledger), "earns and reversals both happened"
    print(f"killed at committed offset {killed_at}; {len(rows)} customers, {len(merged)} merged, "
          f"{len(ledger)} ledger entries, {len(published)} alerts published")
