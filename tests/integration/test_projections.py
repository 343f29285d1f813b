"""The projection writers as a whole on the real stack: live writers, rebuild, checksum, stale writes.

Records for every projection topic (events, cards and a merge, ledger
entries, alerts) are published under a topic prefix and a database of this
module's own; the live writers (``run_projection``, as ``touchpoint
project`` runs them) fill the read model, whose checksum must survive
``touchpoint projections rebuild`` unchanged, and change when a row is
tampered with.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest
from kafka import KafkaProducer

from connectors.platform.alert_wire import AlertSerde, alert_topic
from connectors.platform.registry import RegistryClient
from connectors.platform.serde import EventSerde
from projections.catalog import PROJECTION_TOPICS, READ_MODEL_TABLES, read_model_tables
from projections.checksum import checksum
from projections.customers import CustomersProjection
from projections.rebuild import rebuild
from projections.run import all_projections
from projections.writer import Record, run_projection, stored_offsets, write_batch
from tests.fix_stack import REPO, scoped, settings_env
from touchpoint.contract.models import ContractViolation, validate_event
from touchpoint.generate import generate
from touchpoint.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own(settings: Settings) -> Iterator[Settings]:
    """Settings with a topic prefix and a database of this module's own."""
    with scoped(settings, f"{settings.pg_database}_projections", f"{settings.topic_prefix}-projections") as narrowed:
        yield narrowed


def card(customer_id: str, as_of: str, segment: str, keys: dict[str, list[str]], position: int | None = None) -> bytes:
    view = {"customer_id": customer_id, "value_segment": segment, "interactions": {"total": len(as_of)}}
    doc = {"customer_id": customer_id, "as_of": as_of, "view": view, "keys": keys}
    return orjson.dumps(doc if position is None else {**doc, "position": position})


def entry(customer_id: str, n: int, points: int) -> bytes:
    return orjson.dumps({"customer_id": customer_id, "entry": {
        "id": f"evt-{customer_id}-{n}:tx{n}:earn", "kind": "earn", "points": points,
        "at": f"2026-01-0{n}T10:00:00.000Z", "source_event_id": f"evt-{customer_id}-{n}", "transaction_id": f"tx{n}",
        "rule_version": "2025-01", "rule_id": "base", "multiplier": 1, "reason": "1 point per 1.00"}})


def alert(customer_id: str, kind: str, state: str, at: str) -> dict[str, Any]:
    return {"alert_id": f"{customer_id}/{kind}/1/2026-01-03T10:00:00.000Z/{state}", "kind": kind, "state": state,
            "customer_id": customer_id, "at": at, "since": "2026-01-03T10:00:00.000Z",
            "raised_at": "2026-01-04T10:00:00.000Z", "severity": "medium",
            "reasons": [{"code": "cancel_request", "text": "cancel request 2 days ago",
                         "evidence": {"event_ids": [f"case-{customer_id}"], "days_ago": 2}}],
            "segment": "gold", "value_minor": 1234, "contactable": {"email": True, "sms": False}}


@pytest.fixture(scope="module")
def published(own: Settings) -> dict[tuple[str, int], int]:
    """Publish records to every projection topic; the end offset per (topic, partition)."""
    with RegistryClient(own.registry_url) as registry:
        events, alerts = EventSerde(registry), AlertSerde(registry)
        out: list[tuple[str, bytes, bytes]] = []
        for i, doc in enumerate(generate(6, 20, 7)):
            try:
                event = validate_event(doc, None)
            except ContractViolation:
                continue  # the generator's deliberately bad events
            out.append((own.topic("customer-events"), f"cus_{i % 5}".encode(), events.serialize(event)))
        out += [
            (own.topic("customer-views"), b"cus_a", card("cus_a", "2026-01-02T10:00:00.000Z", "lead", {"phone": ["ka1"]})),  # noqa: E501
            (own.topic("customer-views"), b"cus_b", card("cus_b", "2026-01-02T10:00:00.000Z", "iron", {"email": ["kb1"]})),  # noqa: E501
            (own.topic("customer-views"), b"cus_c", card("cus_c", "2026-01-03T10:00:00.000Z", "lead", {"card": ["kc1"]})),  # noqa: E501
            (own.topic("customer-views"), b"cus_a", card("cus_a", "2026-01-04T10:00:00.000Z", "gold",
                                                        {"phone": ["ka1"], "card": ["kc1"]})),
            (own.topic("customer-views"), b"cus_c", orjson.dumps({"customer_id": "cus_c", "as_of":
                                                                  "2026-01-04T10:00:00.000Z", "merged_into": "cus_a"})),
        ]
        out += [(own.topic("loyalty"), c.encode(), entry(c, n, 10 * n)) for c in ("cus_a", "cus_b") for n in (1, 2, 3)]
        for doc in (alert("cus_a", "churn", "raised", "2026-01-04T10:00:00.000Z"),
                    alert("cus_b", "dormancy", "raised", "2026-01-04T11:00:00.000Z"),
                    alert("cus_a", "churn", "escalated", "2026-01-05T10:00:00.000Z")):
            out.append((alert_topic(own, doc["kind"]), doc["customer_id"].encode(), alerts.serialize(doc)))
    producer = KafkaProducer(bootstrap_servers=own.kafka_bootstrap, acks="all", enable_idempotence=True)
    ends: dict[tuple[str, int], int] = {}
    try:
        for topic, key, value in out:
            # The cards on one partition, as if one key: which card moves a shared identifier key is
            # decided by offsets, which only order records of one partition.
            partition = 0 if topic == own.topic("customer-views") else None
            meta = producer.send(topic, key=key, value=value, partition=partition).get(timeout=30)
            ends[(topic, meta.partition)] = max(ends.get((topic, meta.partition), 0), meta.offset + 1)
    finally:
        producer.close()
    return ends


def run_live_writers(settings: Settings, ends: dict[tuple[str, int], int], timeout_s: float = 90) -> None:
    """Run every projection writer until its stored offsets reach ``ends``."""
    stop = threading.Event()
    registry = RegistryClient(settings.registry_url)
    projections = all_projections(settings, registry)
    threads = [threading.Thread(target=run_projection, args=(settings, p, stop), kwargs={"poll_ms": 100})
               for p in projections]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with psycopg.connect(settings.pg_conninfo()) as conn:
                stored: dict[tuple[str, int], int] = {}
                for p in projections:
                    stored.update(stored_offsets(conn, p.name))
            if all(stored.get(tp, 0) >= end for tp, end in ends.items()):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"live writers did not catch up in {timeout_s} s: stored {stored}, ends {ends}")
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        registry.close()


def touchpoint(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "touchpoint", *args], env=settings_env(settings), cwd=REPO,
        capture_output=True, text=True, timeout=180, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def count(settings: Settings, table: str) -> int:
    with psycopg.connect(settings.pg_conninfo()) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]  # noqa: S608


def test_rebuild_gives_the_live_read_model_and_tampering_shows(
        own: Settings, published: dict[tuple[str, int], int]) -> None:
    assert set(READ_MODEL_TABLES) == set(PROJECTION_TOPICS)
    run_live_writers(own, published)
    live = checksum(own.pg_conninfo())
    assert all(t.rows > 0 for t in live.tables), live.lines()
    assert [t.table for t in live.tables] == read_model_tables()
    # The merge: cus_c is an alias of cus_a, which holds cus_c's card key; cus_a's later card won.
    with psycopg.connect(own.pg_conninfo()) as conn:
        assert conn.execute("SELECT customer_id, value_segment FROM customers ORDER BY 1").fetchall() == [
            ("cus_a", "gold"), ("cus_b", "iron")]
        assert conn.execute("SELECT survivor FROM customer_aliases WHERE alias = 'cus_c'").fetchone() == ("cus_a",)
        assert conn.execute("SELECT customer_id FROM customer_identifiers WHERE key = 'kc1'").fetchone() == ("cus_a",)

    # The command prints the same digests.
    printed = touchpoint(own, "projections", "checksum").stdout.splitlines()
    assert printed == live.lines()
    assert printed[-1].split()[-1] == live.total

    # Rebuild (the command: progress bar on stderr, a summary on stdout): same rows, same digest.
    done = touchpoint(own, "projections", "rebuild")
    total = sum(published.values())
    assert f"rebuilt from {total:,} records" in done.stdout
    assert "100%" in done.stderr and "rebuild" in done.stderr
    assert checksum(own.pg_conninfo()) == live
    with psycopg.connect(own.pg_conninfo()) as conn:
        for p in all_projections(own, registry := RegistryClient(own.registry_url)):
            stored = stored_offsets(conn, p.name)
            assert {tp: n for tp, n in published.items() if tp[0] in p.topics} == stored

    registry.close()
    # Twice in a row, and through the function: still the same.
    report = rebuild(own, progress=False, batch_size=7)
    assert report.total == total
    assert checksum(own.pg_conninfo()) == live

    # Wall-clock columns are not covered; content is, table by table.
    with psycopg.connect(own.pg_conninfo()) as conn:
        conn.execute("UPDATE customers SET updated_at = updated_at - interval '1 day'")
        conn.execute("UPDATE interactions SET recorded_at = recorded_at - interval '1 day'")
    assert checksum(own.pg_conninfo()) == live
    with psycopg.connect(own.pg_conninfo()) as conn:
        conn.execute("UPDATE customers SET value_segment = 'platinum' WHERE customer_id = 'cus_b'")
    tampered = checksum(own.pg_conninfo())
    assert tampered.total != live.total
    assert [t.table for t, u in zip(tampered.tables, live.tables, strict=True) if t != u] == ["customers"]

    # A rebuild repairs it; the live writers then find nothing left to do.
    rebuild(own, progress=False)
    assert checksum(own.pg_conninfo()) == live
    run_live_writers(own, published)
    assert checksum(own.pg_conninfo()) == live
    assert count(own, "interactions") == sum(n for (t, _), n in published.items() if t == own.topic("customer-events"))


@pytest.fixture()
def stale_db(settings: Settings) -> Iterator[Settings]:
    with scoped(settings, f"{settings.pg_database}_stale") as narrowed:
        yield narrowed


def test_an_older_card_never_overwrites_a_newer_one_whatever_the_batches(stale_db: Settings) -> None:
    projection = CustomersProjection(stale_db)
    topic = projection.topics[0]
    newer = Record(topic, 0, 10, b"cus_x", card("cus_x", "2026-01-05T10:00:00.000Z", "gold", {"phone": ["k-new"]}))
    # An older version re-emitted later (an agent restarted on an older state), and a plain replay.
    older_later = Record(topic, 0, 12, b"cus_x", card("cus_x", "2026-01-04T10:00:00.000Z", "lead",
                                                     {"phone": ["k-old"]}))
    replay = Record(topic, 0, 8, b"cus_x", card("cus_x", "2026-01-03T10:00:00.000Z", "iron", {"phone": ["k-old"]}))
    same_time_later = Record(topic, 0, 14, b"cus_x", card("cus_x", "2026-01-05T10:00:00.000Z", "platinum",
                                                         {"phone": ["k-new"]}))

    def state() -> list[tuple[Any, ...]]:
        with psycopg.connect(stale_db.pg_conninfo()) as conn:
            return conn.execute("SELECT customer_id, value_segment, as_of, source_offset FROM customers").fetchall()

    def keys() -> list[tuple[Any, ...]]:
        with psycopg.connect(stale_db.pg_conninfo()) as conn:
            return conn.execute("SELECT key, customer_id FROM customer_identifiers ORDER BY 1").fetchall()

    at = datetime(2026, 1, 5, 10, tzinfo=UTC)

    with psycopg.connect(stale_db.pg_conninfo()) as conn:
        for batches in ([[newer], [older_later], [replay]], [[newer, older_later, replay]],
                        [[replay, older_later, newer]], [[older_later], [newer, replay]]):
            conn.execute("TRUNCATE customers, customer_identifiers, projection_offsets")
            conn.commit()
            for batch in batches:
                write_batch(conn, projection, batch)
            assert state() == [("cus_x", "gold", at, 10)], batches
            # A stale card moves no key (keys are never taken away, so the older one written first keeps its).
            assert ("k-new", "cus_x") in keys()
            if batches[0][0] is newer or len(batches) == 1:
                assert keys() == [("k-new", "cus_x")], batches
        # Same as_of, later offset of the same partition: a newer rendering, it wins.
        write_batch(conn, projection, [same_time_later])
        assert state() == [("cus_x", "platinum", at, 14)]


def test_a_merge_leaves_every_key_on_the_survivor_however_partitions_interleave(stale_db: Settings) -> None:
    """An alias's card and its merge record are on one partition, the survivor's card on another: in
    whatever order the writer reads them (live, after a broker restart, or in a rebuild), the alias's
    keys end on the survivor."""
    projection = CustomersProjection(stale_db)
    topic = projection.topics[0]
    alias_card = Record(topic, 1, 0, b"cus_x", card("cus_x", "2026-01-01T10:00:00.000Z", "lead", {"email": ["k1"]}))
    merged = Record(topic, 1, 1, b"cus_x", orjson.dumps(
        {"customer_id": "cus_x", "as_of": "2026-01-02T10:00:00.000Z", "merged_into": "cus_s"}))
    survivor_card = Record(topic, 2, 0, b"cus_s", card("cus_s", "2026-01-02T10:00:00.000Z", "gold",
                                                       {"email": ["k1"], "phone": ["k2"]}))
    with psycopg.connect(stale_db.pg_conninfo()) as conn:
        for batches in ([[alias_card], [survivor_card], [merged]], [[survivor_card], [alias_card], [merged]],
                        [[alias_card], [merged], [survivor_card]], [[alias_card, survivor_card, merged]]):
            conn.execute("TRUNCATE customers, customer_aliases, customer_identifiers, projection_offsets")
            conn.commit()
            for batch in batches:
                write_batch(conn, projection, batch)
            assert conn.execute("SELECT key, customer_id FROM customer_identifiers ORDER BY 1").fetchall() == [
                ("k1", "cus_s"), ("k2", "cus_s")], batches
            assert conn.execute("SELECT alias, survivor FROM customer_aliases").fetchall() == [("cus_x", "cus_s")]


def test_a_card_older_than_the_merge_of_its_id_never_brings_the_id_back(stale_db: Settings) -> None:
    """The alias's partition writes its card again after a restart (a replay), and the writer may read it
    after the survivor's partition's merge record, both with the same as_of (the log's clock stood still):
    identity's positions order them, in every order of reading. A card of the id newer than its merge
    (the id live again) brings it back, and a replayed merge then changes nothing."""
    projection = CustomersProjection(stale_db)
    topic = projection.topics[0]
    at = "2026-01-02T10:00:00.000Z"
    alias_card = Record(topic, 1, 0, b"cus_x", card("cus_x", at, "lead", {"email": ["k1"]}, position=100))
    replayed = alias_card._replace(offset=7)
    merged = Record(topic, 2, 3, b"cus_x", orjson.dumps(
        {"customer_id": "cus_x", "as_of": at, "position": 200, "merged_into": "cus_s"}))
    survivor_card = Record(topic, 2, 4, b"cus_s", card("cus_s", at, "gold", {"email": ["k1"], "phone": ["k2"]},
                                                       position=200))
    records = [alias_card, merged, survivor_card, replayed]

    def read_model(conn: psycopg.Connection) -> tuple[list[Any], list[Any], list[Any]]:
        return (conn.execute("SELECT customer_id FROM customers ORDER BY 1").fetchall(),
                conn.execute("SELECT alias, survivor FROM customer_aliases").fetchall(),
                conn.execute("SELECT key, customer_id FROM customer_identifiers ORDER BY 1").fetchall())

    with psycopg.connect(stale_db.pg_conninfo()) as conn:
        for order in [*itertools.permutations(records), None]:
            conn.execute("TRUNCATE customers, customer_aliases, customer_identifiers, projection_offsets")
            conn.commit()
            for batch in ([[r] for r in order] if order is not None else [records]):
                write_batch(conn, projection, batch)
            assert read_model(conn) == ([("cus_s",)], [("cus_x", "cus_s")], [("k1", "cus_s"), ("k2", "cus_s")]), order
        live_again = Record(topic, 1, 9, b"cus_x", card("cus_x", at, "iron", {"card": ["k3"]}, position=300))
        write_batch(conn, projection, [live_again])
        write_batch(conn, projection, [merged._replace(offset=11)])
        assert read_model(conn) == ([("cus_s",), ("cus_x",)], [], [("k1", "cus_s"), ("k2", "cus_s"), ("k3", "cus_x")])


def test_an_event_delivered_twice_keeps_one_row_however_partitions_interleave(stale_db: Settings) -> None:
    """A re-published event may reach customer-events twice, keyed by two customers (before and after a
    merge: other partitions); live and rebuilt read models keep the same copy whatever the read order."""
    from projections.interactions import InteractionsProjection

    doc = next(d for d in generate(2, 5, 9) if d["event_id"].startswith("ev-"))
    with RegistryClient(stale_db.registry_url) as registry:
        serde = EventSerde(registry)
        value = serde.serialize(validate_event(doc, None))
        projection = InteractionsProjection(stale_db, serde)
        topic = projection.topics[0]
        first = Record(topic, 1, 5, b"cus_x", value)  # folded into cus_x
        again = Record(topic, 0, 9, b"cus_s", value)  # published again after cus_x merged into cus_s
        with psycopg.connect(stale_db.pg_conninfo()) as conn:
            for batches in ([[first], [again]], [[again], [first]], [[first, again]], [[again, first]]):
                conn.execute("TRUNCATE interactions, projection_offsets")
                conn.commit()
                for batch in batches:
                    write_batch(conn, projection, batch)
                assert conn.execute("SELECT event_id, customer_key FROM interactions").fetchall() == [
                    (doc["event_id"], "cus_s")], batches


def test_a_writer_stopped_by_an_error_it_does_not_retry_stops_the_projections_with_the_reason(
        settings: Settings) -> None:
    """A ledger entry the table refuses stops every writer and the process, non-zero: never idle looking healthy."""
    with scoped(settings, f"{settings.pg_database}_stopped", f"{settings.topic_prefix}-stopped") as narrowed:
        refused = orjson.loads(entry("cus_a", 1, 10))
        refused["entry"]["kind"] = "bonus"  # not a kind the ledger table takes (a CHECK constraint)
        producer = KafkaProducer(bootstrap_servers=narrowed.kafka_bootstrap, acks="all")
        producer.send(narrowed.topic("loyalty"), key=b"cus_a", value=orjson.dumps(refused)).get(30)
        producer.close()
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "touchpoint", "project"], env=settings_env(narrowed), cwd=REPO,
            capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
        assert done.returncode != 0
        assert "projections stopped: loyalty failed" in done.stderr, done.stderr[-2000:]
        assert "loyalty_ledger_kind_check" in done.stdout + done.stderr
