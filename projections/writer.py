"""The projection writer: consume a batch, upsert its rows and offsets in one transaction.

Kafka offsets are never committed to Kafka: the position of a projection
lives in ``projection_offsets`` beside its rows and moves in the same
transaction, so a crash between the two is impossible and a restart resumes
from the last committed batch. A PostgreSQL or registry outage is waited out
with capped backoff, the batch retried whole. On (re)assignment each partition is sought
to its stored position, or to the beginning for a fresh read model; this is
also how a rebuild replays the log. Mappers make rows idempotent by key, so
re-reading a batch changes nothing.

Batches are set-based: :func:`copy_upsert` COPYs a batch's rows into a
session-local staging table and moves them into the read model with one
``INSERT ... SELECT ... ON CONFLICT``, so a batch of 1,000 rows costs a few
round trips and one statement per table, not one statement per row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import orjson
import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from opentelemetry import trace
from psycopg import sql

from connectors.platform.batches import take
from touchpoint.errors import RegistryError, StackError
from touchpoint.kafka_security import confluent_options
from touchpoint.settings import Settings
from touchpoint.telemetry import context_from_headers, count_events, tracer
from touchpoint.telemetry_attrs import BATCH_SIZE, MESSAGING_OFFSET, MESSAGING_PARTITION, MESSAGING_TOPIC, PROJECTION

log = logging.getLogger(__name__)
_TRACER = tracer(__name__)


class Record(NamedTuple):
    """One consumed Kafka message, as a mapper sees it (a named tuple: one is made per message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


class Projection(Protocol):
    """A read model fed from topics: a name, its topics and how to write a batch."""

    name: str
    topics: list[str]

    def write(self, cur: psycopg.Cursor, records: Sequence[Record]) -> None:
        """Map the records to rows and upsert them through ``cur`` (inside the batch transaction)."""


def json_dumps(obj: object) -> bytes:
    """JSON for ``Jsonb(obj, dumps=json_dumps)``: orjson, ~5x the json module (PostgreSQL normalises jsonb)."""
    return orjson.dumps(obj)


def copy_upsert(cur: psycopg.Cursor, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
                conflict: str) -> None:
    """Write ``rows`` into ``table`` through a staging table: COPY, then one ``INSERT ... SELECT``.

    The staging table ``_stage_<table>`` is a temporary table of this session
    with the given columns and their types (no constraints), created on first
    use and emptied at every commit, so it never holds another batch's rows.

    :param conflict: the statement's ``ON CONFLICT ...`` clause (our own SQL,
        never user input); the target's name is ``table``, the new row's ``EXCLUDED``.
    """
    if not rows:
        return
    stage = sql.Identifier(f"_stage_{table}")
    target = sql.Identifier(table)
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    # One round trip; the DELETE finds the table empty unless this transaction already staged rows here.
    cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA; "
                        "DELETE FROM {}").format(stage, names, target, stage))
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, names)) as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute(sql.SQL("INSERT INTO {} AS {} ({}) SELECT {} FROM {} {}").format(
        target, target, names, names, stage, sql.SQL(conflict)))  # our own SQL


def stored_offsets(conn: psycopg.Connection, projection: str) -> dict[tuple[str, int], int]:
    """The next offset to read per (topic, partition) for one projection."""
    rows = conn.execute(
        "SELECT topic, partition, next_offset FROM projection_offsets WHERE projection = %s", (projection,)
    ).fetchall()
    return {(topic, partition): next_offset for topic, partition, next_offset in rows}


def _project_spans(projection: str, records: Sequence[Record]) -> list[trace.Span]:
    """One ``project`` span per record that carries a trace, each a child of the record's own trace.

    Records without a ``traceparent`` (tracing off upstream) cost one empty check.
    """
    spans = []
    for record in records:
        if record.headers and (context := context_from_headers(record.headers)) is not None:
            spans.append(_TRACER.start_span("project", context=context, kind=trace.SpanKind.CONSUMER, attributes={
                PROJECTION: projection, MESSAGING_TOPIC: record.topic,
                MESSAGING_PARTITION: record.partition, MESSAGING_OFFSET: record.offset,
                BATCH_SIZE: len(records)}))
    return spans


def write_batch(conn: psycopg.Connection, projection: Projection, records: Sequence[Record]) -> None:
    """Upsert the batch's rows and its offsets in one transaction."""
    spans = _project_spans(projection.name, records)
    try:
        _write_batch(conn, projection, records)
    finally:
        for span in spans:
            span.end()


def _write_batch(conn: psycopg.Connection, projection: Projection, records: Sequence[Record]) -> None:
    next_offsets: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        next_offsets[key] = max(next_offsets.get(key, 0), record.offset + 1)
    positions = list(next_offsets.items())
    with conn.transaction(), conn.cursor() as cur:
        projection.write(cur, records)
        cur.execute(
            "INSERT INTO projection_offsets (projection, topic, partition, next_offset) "
            "SELECT %s, t, p, o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS x(t, p, o) "
            "ON CONFLICT (projection, topic, partition) DO UPDATE "
            "SET next_offset = GREATEST(projection_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
            (projection.name, [t for (t, _), _ in positions], [p for (_, p), _ in positions],
             [o for _, o in positions]),
        )


def projection_consumer(settings: Settings, client_id: str, eof: bool = False) -> Consumer:
    """A consumer for a projection's topics, assigned by hand: its positions live in PostgreSQL, never in Kafka.

    confluent-kafka (librdkafka) rather than kafka-python's pure-Python fetcher, which was an eighth of a
    rebuild's CPU. ``eof``: report the end of each partition (a rebuild stops there).
    """
    return Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"{settings.topic_prefix}.projections",  # required by the client; never joined nor committed
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": eof,
        # After a broker restart, try again within 2 s: the read model must not lag long behind a broker back.
        "reconnect.backoff.max.ms": 2000,
        **confluent_options(settings),
    })


def topic_partitions(consumer: Consumer, topics: Sequence[str], what: str,
                     timeout_s: float = 60.0) -> list[tuple[str, int]]:
    """Every (topic, partition) of ``topics``, waiting for a topic being made.

    :raises StackError: a topic still has no partitions after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    out: list[tuple[str, int]] = []
    for topic in topics:
        while True:
            try:
                found = consumer.list_topics(topic, timeout=5).topics.get(topic)
            except KafkaException:
                found = None
            if found is not None and found.error is None and found.partitions:
                out += [(topic, p) for p in sorted(found.partitions)]
                break
            if time.monotonic() > deadline:
                raise StackError(f"{what}: topic {topic} has no partitions (does it exist? `touchpoint topics`)")
            time.sleep(0.2)
    return out


def records_of(messages: Sequence[Message], what: str) -> list[Record]:
    """The records among consumed messages; the client's news (a broker away) is logged, never a record."""
    records = []
    make = tuple.__new__  # Record's own __new__ adds a call per message
    for m in messages:
        error = m.error()
        if error is None:
            records.append(make(Record, (m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers() or ())))
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("%s: consumer reports %s", what, error)
    return records


def _assign_from_stored(consumer: Consumer, topics: Sequence[str], conninfo: str, projection: str) -> None:
    """Assign every partition of ``topics`` at its stored position (or the beginning)."""
    partitions = topic_partitions(consumer, topics, f"projection {projection}")
    with psycopg.connect(conninfo) as conn:
        offsets = stored_offsets(conn, projection)
    consumer.assign([TopicPartition(t, p, offsets.get((t, p), OFFSET_BEGINNING)) for t, p in partitions])
    log.info("partitions assigned", extra={"projection": projection, "positions": {
        f"{t}/{p}": offsets.get((t, p), 0) for t, p in partitions}})


def run_projection(settings: Settings, projection: Projection, stop: threading.Event,
                   batch_size: int = 1000, poll_ms: int = 200) -> None:
    """Feed one projection until ``stop`` is set; PostgreSQL outages are retried with backoff."""
    conninfo = settings.pg_conninfo()
    consumer = projection_consumer(settings, f"touchpoint-projection-{projection.name}")
    _assign_from_stored(consumer, projection.topics, conninfo, projection.name)
    conn: psycopg.Connection | None = None
    backoff = 0.5
    try:
        while not stop.is_set():
            records = records_of(take(consumer, batch_size, poll_ms / 1000), f"projection {projection.name}")
            while records and not stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(conninfo)
                    write_batch(conn, projection, records)
                    count_events(f"projection {projection.name}", "written", len(records))
                    log.debug("batch written", extra={"projection": projection.name, "records": len(records)})
                    backoff = 0.5
                    break
                except (psycopg.OperationalError, RegistryError) as exc:
                    log.warning("projection write failed; retrying", extra={"projection": projection.name,
                                                                             "error": str(exc), "backoff_s": backoff})
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
    finally:
        consumer.close()
        if conn is not None:
            conn.close()
