"""The oracle harness of the end-to-end tests: the worker's input log folded offline must equal what came out.

Every end-to-end test of the pipeline (a kill, two workers, duplicates, ...)
drains the pipeline with :func:`drained` and checks, with
:func:`assert_equals_oracle`, that the cards, aliases, loyalty ledger and
alerts in PostgreSQL and on the topics equal the fold of ``touchpoint.accepted``
by the workers' own Folder: every accepted event reflected exactly once, no
point lost or doubled, the same customers, merges and alerts.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from kafka import KafkaConsumer, TopicPartition

from connectors.platform.alert_wire import AlertSerde
from connectors.platform.control import erased_id, is_erasure
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from projections.lag import pipeline_lag
from streams.identity import is_tick, stage_folder
from touchpoint.core.fold import Folder, tick_of
from touchpoint.core.profile import render
from touchpoint.settings import Settings


def end_offset(settings: Settings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def committed(settings: Settings) -> int:
    """The identity stage's committed offset on ``accepted``."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.stage_group("identity"),
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


def oracle(settings: Settings, once: bool = False, in_event_time: bool = False) -> Folder:
    """Fold the worker's whole input log offline in one Folder (identity and views, in log order).

    :param once: skip every event whose id came earlier in the log (what the log would
        be without duplicate deliveries).
    :param in_event_time: fold the log's events sorted by event time (then event id) instead, as if
        every channel had published at once (a log of events only: no ticks, no erasures).
    """
    seen: set[str] = set()
    folder = stage_folder(settings)
    events: list[Any] = []
    by_offset: dict[int, Any] = {}  # the log read so far: the history guardrails in event time read again
    folder.history = lambda offsets: [by_offset[offset] for offset in offsets]
    with RegistryClient(settings.registry_url) as registry:
        serde = EventSerde(registry)
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed",
                                 enable_auto_commit=False, consumer_timeout_ms=3000)
        tp = TopicPartition(settings.topic("accepted"), 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        try:
            for message in consumer:
                if is_erasure(message.headers):
                    customer_id = erased_id(message.value)
                    if customer_id is not None:
                        folder.erase(customer_id)
                elif is_tick(message.headers):
                    at = tick_of(json.loads(message.value))
                    if at is not None:
                        folder.tick(at)
                else:
                    event = serde.deserialize(message.value)
                    by_offset[message.offset] = event
                    if once:
                        if event.event_id in seen:
                            continue
                        seen.add(event.event_id)
                    if in_event_time:
                        events.append(event)
                    else:
                        folder.position = message.offset
                        folder.add(event)
                if message.offset + 1 >= end:
                    break
        finally:
            consumer.close()
    if in_event_time:
        assert not folder.views, "a log folded in event time holds events only"
        for position, event in enumerate(sorted(events, key=lambda e: (e.occurred_at, e.event_id))):
            by_offset[position] = event
            folder.position = position
            folder.add(event)
    return folder


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


def drained(settings: Settings, after: int = -1) -> bool:
    """Whether every stage has caught up: ingest on the channel topics, the worker on ``accepted`` (past
    ``after``), every projection on its topics (stages checked in pipeline order, each commits only
    after its output was acknowledged)."""
    return committed(settings) > after and not any(pipeline_lag(settings).values())


def assert_equals_oracle(settings: Settings, population_checks: bool = True) -> dict[str, Any]:
    """Check the read model and the alert topics against the fold of the log; returns counts to print.

    :param population_checks: also check that the population exercised merges, refunds and alerts
        (the tests' populations do; a benchmark's backlog of any size need not).
    """
    expected = oracle(settings)
    expected_alerts = [alert for alert, _ in expected.drain_alerts()]
    published = alerts_on_topics(settings)
    segment = expected.config.segment
    with psycopg.connect(settings.pg_conninfo()) as conn:
        rows = {cid: (view, as_of) for cid, view, as_of in conn.execute(
            "SELECT customer_id, view, as_of FROM customers")}
        aliases = dict(conn.execute("SELECT alias, survivor FROM customer_aliases").fetchall())
        ledger = conn.execute("SELECT entry_id, customer_id, points FROM loyalty_ledger").fetchall()
        projected_alerts = {(cid, kind): alert_id for cid, kind, alert_id in conn.execute(
            "SELECT customer_id, kind, alert_id FROM alerts")}
    assert set(rows) == set(expected.views), ("the same customers", "only in PostgreSQL:",
                                              sorted(set(rows) - set(expected.views))[:10], "only in the fold:",
                                              sorted(set(expected.views) - set(rows))[:10])
    for customer_id, (view, as_of) in rows.items():
        card = render(expected.views[customer_id], as_of, segment)
        assert view == card, (customer_id, {k: (view.get(k), card.get(k)) for k in card.keys() | view.keys()
                                            if view.get(k) != card.get(k)})
    merged = {alias for view in expected.views.values() for alias in view.aliases}
    assert set(aliases) == merged, (sorted(set(aliases) - merged), sorted(merged - set(aliases)))

    # The ledger: every entry the oracle issued, once, on the customer (or an alias of it) it was issued to.
    # That is the views' entries, and for a component folded anew (guardrails in event time) the entries its
    # views held before and their withdrawals.
    issued = expected.drain_entries()
    expected_entries = {entry.id: (customer_id, entry.points) for customer_id, entry in issued}
    assert len(expected_entries) == len(issued), "no entry id issued twice"
    assert {entry.id for view in expected.views.values() for entry in view.loyalty.entries.values()} <= \
        expected_entries.keys()
    assert len(ledger) == len({entry_id for entry_id, _, _ in ledger}) == len(expected_entries)

    def survivor(customer_id: str) -> str:
        while customer_id in aliases:  # a merge of a merge is a chain of aliases
            customer_id = aliases[customer_id]
        return customer_id

    owned: dict[str, int] = {}
    for entry_id, customer_id, points in ledger:
        issued_to, issued_points = expected_entries[entry_id]
        assert (survivor(customer_id), points) == (survivor(issued_to), issued_points), entry_id
        owned[survivor(customer_id)] = owned.get(survivor(customer_id), 0) + points
    for customer_id in rows:
        assert owned.get(customer_id, 0) == sum(e.points for e in expected.views[customer_id].loyalty.entries.values())
    # Alerts: the same transitions as the replay decided (a re-emission after the kill repeats an id,
    # which subscribers deduplicate on), and the latest per customer and kind in PostgreSQL.
    assert {a["alert_id"] for a in published} == {a.alert_id for a in expected_alerts}
    last = {(a.customer_id, a.kind): a.alert_id for a in expected_alerts}
    assert projected_alerts == last
    counts = {"customers": len(rows), "merged": len(merged), "ledger": len(ledger), "alerts": len(published)}
    if population_checks:
        assert len(rows) > 100 and merged, "the population is big enough to mean something"
        raised = [a for a in expected_alerts if a.kind == "dormancy" and a.state == "raised"]
        assert len(raised) > 50, "months of silence after the history make many customers dormant"
        earned = sum(points for _, _, points in ledger if points > 0)
        assert earned > 0 and any(points < 0 for _, _, points in ledger), "earns and reversals both happened"
    return counts
