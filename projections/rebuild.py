"""Rebuild the read model from the log: empty it, then replay every projection topic to its end.

``touchpoint projections rebuild`` runs :func:`rebuild`:

1. migrate (a fresh database gets its tables);
2. note the end offset of every partition of every projection topic: the
   rebuild replays exactly up to there, records written meanwhile are left
   to ``touchpoint project``;
3. in one transaction, truncate the read-model tables
   (:data:`~projections.run.READ_MODEL_TABLES`) and delete those
   projections' stored offsets (other tables, e.g. an audit log, are kept);
4. consume the topics from their beginning and write each batch with
   :func:`~projections.writer.write_batch`, the very path the live writers
   take: rows and stored offsets move in one transaction.

Because of step 4, a rebuild interrupted half-way leaves a consistent,
partial read model whose stored offsets say how far it got: ``touchpoint
project`` (or another rebuild) carries on from there. Stop the live writers
(``touchpoint project``) before rebuilding: they would keep their own
positions and miss what the truncate removed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from kafka import KafkaConsumer, TopicPartition
from psycopg import sql
from tqdm import tqdm

from connectors.registry import RegistryClient
from projections.catalog import READ_MODEL_TABLES
from projections.migrate import migrate
from projections.run import all_projections
from projections.writer import Projection, Record, write_batch
from touchpoint.errors import StackError
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    """What a rebuild replayed: records per projection and the time it took."""

    records: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.records.values())

    def line(self) -> str:
        """One human line: counts per projection and the speed."""
        rate = self.total / self.seconds if self.seconds > 0 else 0.0
        parts = ", ".join(f"{name} {n:,}" for name, n in self.records.items())
        return f"rebuilt from {self.total:,} records ({parts}) in {self.seconds:.1f} s: {rate:,.0f} records/s"


def _partitions(consumer: KafkaConsumer, topics: Sequence[str], timeout_s: float = 30.0) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout_s
    out: list[TopicPartition] = []
    for topic in topics:
        while (ids := consumer.partitions_for_topic(topic)) is None:
            if time.monotonic() > deadline:
                raise StackError(f"rebuild: topic {topic} has no partitions (does it exist? `touchpoint topics`)")
            time.sleep(0.2)
        out += [TopicPartition(topic, p) for p in sorted(ids)]
    return out


def truncate(conn: psycopg.Connection, projections: Sequence[Projection]) -> None:
    """Empty the projections' tables and forget their stored offsets, in one transaction."""
    tables = [table for p in projections for table in READ_MODEL_TABLES[p.name]]
    with conn.transaction():
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, tables))))
        conn.execute("DELETE FROM projection_offsets WHERE projection = ANY(%s)", ([p.name for p in projections],))


def rebuild(settings: Settings, projections: Sequence[Projection] | None = None, *, progress: bool = True,
            batch_size: int = 5000) -> RebuildReport:
    """Empty the read model and replay the projection topics into it, up to their current ends.

    :param projections: what to rebuild (default: every projection of ``touchpoint project``).
    :param progress: draw a progress bar on stderr.
    :param batch_size: records per poll; each poll is one transaction per projection it touched.
    """
    if projections is None:
        with RegistryClient(settings.registry_url) as registry:
            return rebuild(settings, all_projections(settings, registry), progress=progress, batch_size=batch_size)
    began = time.perf_counter()
    migrate(settings)
    unknown = [p.name for p in projections if p.name not in READ_MODEL_TABLES]
    if unknown:
        raise StackError(f"rebuild: no read-model tables known for projection(s) {', '.join(unknown)}")
    by_topic = {topic: p for p in projections for topic in p.topics}
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", client_id="touchpoint-rebuild",
        max_poll_records=batch_size, max_partition_fetch_bytes=8 * 1024 * 1024,
        # kafka-python checks CRC32C in pure Python without the optional crc32c package: most of a
        # rebuild's CPU on large cards. The broker checked every batch when it was appended.
        check_crcs=False,
        **kafka_python_options(settings),
    )
    report = RebuildReport(records={p.name: 0 for p in projections})
    try:
        partitions = _partitions(consumer, list(by_topic))
        consumer.assign(partitions)
        begins = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        todo = [tp for tp in partitions if ends[tp] > begins[tp]]
        total = sum(ends[tp] - begins[tp] for tp in todo)
        with psycopg.connect(settings.pg_conninfo()) as conn:
            truncate(conn, projections)
            log.info("read model truncated; replaying", extra={"records": total, "partitions": len(todo)})
            consumer.pause(*[tp for tp in partitions if tp not in todo])
            for tp in todo:
                consumer.seek(tp, begins[tp])
            done = {tp: begins[tp] for tp in todo}
            with tqdm(total=total, file=sys.stderr, unit="rec", unit_scale=True, disable=not progress,
                      desc="rebuild", dynamic_ncols=True) as bar:
                while todo:
                    polled = consumer.poll(timeout_ms=500)
                    batches: dict[str, list[Record]] = {}
                    for tp, messages in polled.items():
                        end = ends[tp]
                        batch = batches.setdefault(by_topic[tp.topic].name, [])
                        batch += [Record(m.topic, m.partition, m.offset, m.key, m.value, m.headers or ())
                                  for m in messages if m.offset < end]
                    for projection in projections:
                        records = batches.get(projection.name)
                        if records:
                            write_batch(conn, projection, records)
                            report.records[projection.name] += len(records)
                    # Progress by position, not by records: compaction gaps and transaction markers count too.
                    for tp in list(todo):
                        position = min(consumer.position(tp), ends[tp])
                        bar.update(position - done[tp])
                        done[tp] = position
                        if position >= ends[tp]:
                            consumer.pause(tp)
                            todo.remove(tp)
    finally:
        consumer.close()
    report.seconds = time.perf_counter() - began
    return report
