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
   take: rows and stored offsets move in one transaction. Each projection
   replays in its own thread with its own consumer and connection, as the
   live writers do, so PostgreSQL works on one projection's batch while
   Python maps another's.

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
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import KafkaError, TopicPartition
from psycopg import sql
from tqdm import tqdm

from connectors.registry import RegistryClient
from projections.catalog import READ_MODEL_TABLES
from projections.migrate import migrate
from projections.run import all_projections
from projections.writer import Projection, projection_consumer, records_of, topic_partitions, write_batch
from touchpoint.errors import StackError
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
    probe = projection_consumer(settings, "touchpoint-rebuild")
    try:
        bounds = {p.name: {(t, n): probe.get_watermark_offsets(TopicPartition(t, n), timeout=30)
                           for t, n in topic_partitions(probe, p.topics, "rebuild")} for p in projections}
    finally:
        probe.close()
    report = RebuildReport(records={p.name: 0 for p in projections})
    total = sum(high - low for parts in bounds.values() for low, high in parts.values())
    with psycopg.connect(settings.pg_conninfo()) as conn:
        truncate(conn, projections)
    log.info("read model truncated; replaying", extra={"records": total})
    lock = threading.Lock()
    with tqdm(total=total, file=sys.stderr, unit="rec", unit_scale=True, disable=not progress,
              desc="rebuild", dynamic_ncols=True) as bar, ThreadPoolExecutor(len(projections)) as pool:
        def advanced(n: int) -> None:
            with lock:
                bar.update(n)

        replays = [pool.submit(_replay, settings, p, bounds[p.name], batch_size, advanced) for p in projections]
        for projection, replay in zip(projections, replays, strict=True):
            report.records[projection.name] = replay.result()
    report.seconds = time.perf_counter() - began
    return report


def _replay(settings: Settings, projection: Projection, bounds: dict[tuple[str, int], tuple[int, int]],
            batch_size: int, advanced: Callable[[int], None]) -> int:
    """Write one projection's partitions from their beginning up to the ends noted; returns the records written."""
    ends = {tp: high for tp, (low, high) in bounds.items() if high > low}
    if not ends:
        return 0
    done = {tp: bounds[tp][0] for tp in ends}
    consumer = projection_consumer(settings, f"touchpoint-rebuild-{projection.name}", eof=True)
    written = 0
    try:
        consumer.assign([TopicPartition(t, p, bounds[t, p][0]) for t, p in ends])
        with psycopg.connect(settings.pg_conninfo()) as conn:
            while ends:
                messages = consumer.consume(batch_size, 0.5)
                reached: set[tuple[str, int]] = set()
                for m in messages:
                    error = m.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        reached.add((m.topic(), m.partition()))
                records = [r for r in records_of(messages, f"rebuild {projection.name}")
                           if (r.topic, r.partition) in ends and r.offset < ends[r.topic, r.partition]]
                if records:
                    write_batch(conn, projection, records)
                    written += len(records)
                # Progress by position, not by records: compaction gaps and transaction markers count too.
                for record in records:
                    tp = (record.topic, record.partition)
                    advanced(record.offset + 1 - done[tp])
                    done[tp] = record.offset + 1
                for tp in list(ends):
                    if tp in reached or done[tp] >= ends[tp]:
                        advanced(ends[tp] - done[tp])
                        done[tp] = ends[tp]
                        del ends[tp]
    finally:
        consumer.close()
    return written
