"""Benchmark of the projections: write throughput into PostgreSQL and rebuild speed (records/s).

Preparation (not timed). A population from ``touchpoint.generate`` is
checked against the contract (the deliberately bad events skipped) and
folded the way the identity and profile agents fold ``touchpoint.accepted``: a
worker-mode :class:`~touchpoint.core.fold.Folder`, batches of 1,000 events,
a tick every ``--tick-days`` of event time (default 7: daily ticks make
alert flapping a quarter of the records and the preparation slow); after each batch the agent's output
is produced (``customer-events`` with the event's Avro bytes,
``customer-views`` cards and merges, ``loyalty`` entries, alert transitions
as Avro), onto the projection topics of a fresh topic prefix, into a fresh
database ``touchpoint_bench_<id>`` (both removed at the end).

Timed:

1. **Writes.** Every record is read back from the topics into memory, then
   each projection's records are written with
   :func:`projections.writer.write_batch` (the live writer's call: rows and
   stored offsets in one transaction), ``--batch`` records per transaction.
   Printed per projection and in total as records/s: the PostgreSQL side of
   ``touchpoint project``, without Kafka.
2. **Rebuild.** :func:`projections.rebuild.rebuild` (``touchpoint
   projections rebuild``): truncate, consume every projection topic from the
   beginning and write it. Printed as records/s, Kafka included. The
   read-model checksum after step 1 and after the rebuild must be equal; the
   exit status is 1 if they differ.

CPU time of this process is printed next to wall time (the rest is
PostgreSQL's and Kafka's). ``--tiny`` is a smoke run of a few seconds.

    python -m bench.projections --customers 1000
    python -m bench.projections --tiny
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from bench.machine import machine_line
from touchpoint.contract.models import ContractViolation, Event, validate_event
from touchpoint.generate import generate

_DAY = timedelta(days=1)
AGENT_BATCH = 1000  # events per card flush here (a live profile keeping up flushes every batch it takes)

# (topic name without prefix, key, value, headers)
Out = tuple[str, bytes, bytes, list[tuple[str, bytes]] | None]


def _events(customers: int, days: int, seed: int) -> tuple[list[Event], int]:
    events, bad = [], 0
    for doc in generate(customers, days, seed):
        try:
            events.append(validate_event(doc, None))
        except ContractViolation:
            bad += 1
    return events, bad


def _agent_output(events: list[Event], secret: bytes, event_bytes: object, alert_bytes: object,
                  tick_days: int) -> Iterator[Out]:
    """What the profile agent would publish for ``events`` (batches of 1,000, a tick every ``tick_days``)."""
    from touchpoint.contract.cards import card_record, log_position, merged_record
    from touchpoint.core.fold import FoldConfig, Folder
    from touchpoint.core.profile import render

    folder = Folder(FoldConfig(), secret=secret, keep_decisions=False, log_clock_check=False)
    segment = folder.config.segment
    folded = [0]  # events folded so far: the position (one ordered log here)

    def flush() -> Iterator[Out]:
        for alert, context in folder.drain_alerts():
            yield (f"alerts.{alert.kind}", alert.customer_id.encode(),  # type: ignore[operator]
                   alert_bytes({**alert.to_json(), **context}), None)
        for customer_id, entry in folder.drain_entries():
            doc = {"customer_id": customer_id, "entry": entry.to_json()}
            yield "loyalty", customer_id.encode(), json.dumps(doc).encode(), None
        touched, merged = folder.drain_changes()
        as_of = datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=folder.latest_ms or 0)
        stamp = as_of.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        position = log_position((folded[0], 0))
        for customer_id in sorted(touched):
            card = render(folder.views[customer_id], as_of, segment, folder.rules)
            keys = {kind: sorted(found) for kind, found in folder.views[customer_id].keys.items()}
            yield "customer-views", *card_record(customer_id, stamp, position, card, keys)
        for alias, survivor in sorted(merged.items()):
            yield "customer-views", *merged_record(alias, stamp, position, survivor)

    day: datetime | None = None
    in_batch = 0
    for event in events:
        midnight = event.occurred_at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if day is None or midnight >= day + tick_days * _DAY:
            if day is not None:
                yield from flush()
                folder.tick(midnight)
                in_batch = 0
            day = midnight
        rejected = len(folder.rejected)
        folder.add(event)
        folded[0] += 1
        if folder.last_customer_id is not None and len(folder.rejected) == rejected:
            yield "customer-events", folder.last_customer_id.encode(), event_bytes(event), None  # type: ignore[operator]
        in_batch += 1
        if in_batch >= AGENT_BATCH:
            yield from flush()
            in_batch = 0
    yield from flush()


def _publish(settings: object, out: list[Out]) -> None:
    """Send with aiokafka: its record batches are built in C (kafka-python's CRC32C is pure Python)."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def send_all() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",  # type: ignore[attr-defined]
                                    linger_ms=20, max_batch_size=512 * 1024, max_request_size=8 * 1024 * 1024)
        await producer.start()
        try:
            sent = [await producer.send(settings.topic(name), value, key=key, headers=headers)  # type: ignore[attr-defined]
                    for name, key, value, headers in out]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(send_all())


def _read_back(settings: object, topics: list[str]) -> list[object]:
    """Every record of ``topics`` as :class:`projections.writer.Record`, in partition order."""
    from kafka import KafkaConsumer, TopicPartition

    from projections.writer import Record

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,  # type: ignore[attr-defined]
                             enable_auto_commit=False, isolation_level="read_committed",
                             max_partition_fetch_bytes=8 * 1024 * 1024, check_crcs=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[object] = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for messages in consumer.poll(timeout_ms=500, max_records=10_000).values():
                out += [Record(m.topic, m.partition, m.offset, m.key, m.value, m.headers or ()) for m in messages]
        return out
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.projections", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1000, help="records per transaction in the write test "
                                                                "(the live writer's poll size)")
    parser.add_argument("--tick-days", type=int, default=7, help="event-time days between the clock's ticks")
    parser.add_argument("--rebuild-batch", type=int, default=5000, help="records per poll in the rebuild")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 100 customers x 60 days")
    parser.add_argument("--json", action="store_true", help="the lines on stderr; the figures as one JSON object")
    args = parser.parse_args(argv)
    figures: dict[str, object] = {}

    def print(*parts: object, file: object = None) -> None:  # noqa: A001 - every line of the run, one switch
        builtins.print(*parts, file=sys.stderr if args.json or file is sys.stderr else sys.stdout, flush=True)

    if args.tiny:
        args.customers, args.days = 100, 60
    if args.batch < 1 or args.rebuild_batch < 1 or args.tick_days < 1:
        parser.error("--batch, --rebuild-batch and --tick-days must be at least 1")
    # A SIGTERM (a timeout) still drops the database and the topics in the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(machine_line())

    import psycopg
    from kafka import KafkaAdminClient
    from psycopg import sql

    from connectors.platform.alert_wire import AlertSerde
    from connectors.platform.registry import RegistryClient
    from connectors.platform.serde import EventSerde
    from connectors.platform.topics import ensure_topics
    from projections.checksum import checksum
    from projections.migrate import migrate
    from projections.rebuild import rebuild
    from projections.run import all_projections
    from projections.writer import Record, write_batch
    from touchpoint.settings import load_settings

    run = uuid.uuid4().hex[:10]
    base = load_settings()
    settings = base.model_copy(update={"topic_prefix": f"bench-{run}", "pg_database": f"touchpoint_bench_{run}"})
    admin = settings.pg_conninfo("postgres")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.pg_database)))
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL at {settings.pg_host}:{settings.pg_port} is not reachable (touchpoint stack up?): {exc}",
              file=sys.stderr)
        return 2
    registry = RegistryClient(settings.registry_url)
    try:
        began = time.perf_counter()
        events, bad = _events(args.customers, args.days, args.seed)
        event_serde, alert_serde = EventSerde(registry), AlertSerde(registry)
        out = list(_agent_output(events, settings.identifier_key.get_secret_value().encode(),
                                 event_serde.serialize, alert_serde.serialize, args.tick_days))
        counts: dict[str, int] = {}
        for name, *_ in out:
            counts[name] = counts.get(name, 0) + 1
        print(f"prepared {len(events)} events ({args.customers} customers x {args.days} days, seed {args.seed}; "
              f"{bad} invalid skipped) -> {len(out)} projection records "
              f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}) "
              f"in {time.perf_counter() - began:.1f}s; load average {os.getloadavg()[0]:.2f}")
        ensure_topics(settings)
        began = time.perf_counter()
        _publish(settings, out)
        took = time.perf_counter() - began
        print(f"published to topic prefix {settings.topic_prefix} in {took:.1f}s ({len(out) / took:,.0f} records/s)")
        migrate(settings)
        projections = all_projections(settings)
        conninfo = settings.pg_conninfo()

        # 1. writes
        total_records, total_wall, total_cpu = 0, 0.0, 0.0
        with psycopg.connect(conninfo) as conn:
            for projection in projections:
                records: list[Record] = _read_back(settings, list(projection.topics))  # type: ignore[assignment]
                batches = [records[i:i + args.batch] for i in range(0, len(records), args.batch)]
                wall, cpu = time.perf_counter(), time.process_time()
                for chunk in batches:
                    write_batch(conn, projection, chunk)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                total_records, total_wall, total_cpu = total_records + len(records), total_wall + wall, total_cpu + cpu
                print(f"write {projection.name}: {len(records)} records in {len(batches)} transactions in "
                      f"{wall:.2f}s wall {cpu:.2f}s cpu: {len(records) / wall if wall else 0:,.0f} records/s")
        figures["write_records_per_s"] = total_records / total_wall
        print(f"write throughput: {total_records} records in {total_wall:.2f}s wall {total_cpu:.2f}s cpu "
              f"(client), batches of {args.batch}: {total_records / total_wall:,.0f} records/s")
        live = checksum(conninfo)

        # 2. rebuild
        cpu = time.process_time()
        report = rebuild(settings, [p.name for p in projections], progress=False, batch_size=args.rebuild_batch)
        cpu = time.process_time() - cpu + report.cpu_seconds  # the rebuild's processes included
        print(f"rebuild: {report.line()} ({cpu:.2f}s cpu client), polls of {args.rebuild_batch}")
        rebuilt = checksum(conninfo)
        figures.update(rebuild_records_per_s=report.total / report.seconds, checksum_equal=live == rebuilt,
                       records=report.total, load_average=os.getloadavg()[0], machine=machine_line())
        if args.json:
            builtins.print(json.dumps(figures, sort_keys=True))
        print(f"checksum: written {live.total[:16]}, rebuilt {rebuilt.total[:16]} "
              f"({'equal' if live == rebuilt else 'DIFFERENT'}; {sum(t.rows for t in live.tables)} rows)")
        if live != rebuilt:
            for a, b in zip(live.lines(), rebuilt.lines(), strict=True):
                print(f"  written {a}\n  rebuilt {b}", file=sys.stderr)
            return 1
        return 0
    finally:
        registry.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(settings.pg_database)))
        kafka_admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            ours = [t for t in kafka_admin.list_topics() if t.startswith(settings.topic_prefix + ".")]
            if ours:
                kafka_admin.delete_topics(ours)
        finally:
            kafka_admin.close()


if __name__ == "__main__":
    raise SystemExit(main())
