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
   replays in its own process with its own consumer and connection, so the
   projections map their records on both cores while PostgreSQL writes.

Because of step 4, a rebuild interrupted half-way leaves a consistent,
partial read model whose stored offsets say how far it got: ``touchpoint
project`` (or another rebuild) carries on from there. Stop the live writers
(``touchpoint project``) before rebuilding: they would keep their own
positions and miss what the truncate removed.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import KafkaError, TopicPartition
from psycopg import sql
from tqdm import tqdm

from connectors.platform.registry import RegistryClient
from projections.catalog import READ_MODEL_TABLES
from projections.migrate import migrate
from projections.run import all_projections
from projections.writer import Projection, Record, projection_consumer, records_of, topic_partitions, write_batch
from touchpoint.errors import StackError
from touchpoint.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    """What a rebuild replayed: records per projection and the time it took."""

    records: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of the replaying processes (one per projection)."""

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


def rebuild(settings: Settings, names: Sequence[str] | None = None, *, progress: bool = True,
            batch_size: int = 5000) -> RebuildReport:
    """Empty the read model and replay the projection topics into it, up to their current ends.

    :param names: the projections to rebuild (default: every projection of ``touchpoint project``).
    :param progress: draw a progress bar on stderr.
    :param batch_size: records per poll; each poll is one transaction per projection it touched.
    """
    began = time.perf_counter()
    migrate(settings)
    with RegistryClient(settings.registry_url) as registry:
        known = {p.name: p for p in all_projections(settings, registry)}
    names = list(known) if names is None else list(names)
    unknown = [name for name in names if name not in known or name not in READ_MODEL_TABLES]
    if unknown:
        raise StackError(f"rebuild: no read-model tables known for projection(s) {', '.join(unknown)}")
    projections = [known[name] for name in names]
    probe = projection_consumer(settings, "touchpoint-rebuild")
    try:
        bounds = {p.name: {(t, n): probe.get_watermark_offsets(TopicPartition(t, n), timeout=30)
                           for t, n in topic_partitions(probe, p.topics, "rebuild")} for p in projections}
    finally:
        probe.close()
    report = RebuildReport(records={name: 0 for name in names})
    # A projection read twice (a compacted topic: see _replay) counts its records twice.
    total = sum((2 if hasattr(p, "newest") else 1) * (high - low)
                for p in projections for low, high in bounds[p.name].values())
    with psycopg.connect(settings.pg_conninfo()) as conn:
        truncate(conn, projections)
    log.info("read model truncated; replaying", extra={
        "records": sum(high - low for parts in bounds.values() for low, high in parts.values())})
    # One process per projection, as the live writers are one thread each: mapping records to rows is
    # Python's work, and in threads the projections took turns on one core (a rebuild ran at 16k
    # records/s on 12 s of CPU in 13 s); PostgreSQL works in its own processes either way.
    # Forked from a clean server process that imported this module once (never a fork of this process,
    # which may run librdkafka's or other threads): a spawned child each spent ~0.6 s importing.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    news: Any = context.Queue()
    workers = [context.Process(target=_replay_process, args=(settings, name, bounds[name], batch_size, news),
                               name=f"rebuild-{name}", daemon=True) for name in names]
    for worker in workers:
        worker.start()
    failed: list[str] = []
    try:
        with tqdm(total=total, file=sys.stderr, unit="rec", unit_scale=True, disable=not progress,
                  desc="rebuild", dynamic_ncols=True) as bar:
            running = len(workers)
            while running:
                try:
                    what, name, value = news.get(timeout=1.0)
                except queue.Empty:
                    dead = [w.name for w in workers if w.exitcode not in (None, 0)]
                    if dead and not failed:
                        raise StackError(f"rebuild: {', '.join(dead)} exited without a report") from None
                    continue
                if what == "progress":
                    bar.update(value)
                elif what == "done":
                    report.records[name], cpu = value
                    report.cpu_seconds += cpu
                    running -= 1
                else:
                    failed.append(f"{name}: {value}")
                    running -= 1
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
    if failed:
        raise StackError("rebuild failed (the read model is partial; its stored offsets say how far): "
                         + "; ".join(failed))
    report.seconds = time.perf_counter() - began
    return report


def _replay_process(settings: Settings, name: str, bounds: dict[tuple[str, int], tuple[int, int]],
                    batch_size: int, news: Any) -> None:
    """One projection's replay in its own process; its progress, result or error go to ``news``."""
    try:
        with RegistryClient(settings.registry_url) as registry:
            projection = next(p for p in all_projections(settings, registry) if p.name == name)
            replayed = _replay(settings, projection, bounds, batch_size,
                               lambda n: news.put(("progress", name, n)) if n else None)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        news.put(("error", name, f"{type(exc).__name__}: {exc}"))
        return
    news.put(("done", name, (replayed, time.process_time())))


def _replay(settings: Settings, projection: Projection, bounds: dict[tuple[str, int], tuple[int, int]],
            batch_size: int, advanced: Callable[[int], None]) -> int:
    """Write one projection's partitions from their beginning up to the ends noted; returns the records replayed.

    A projection of a compacted topic (one that says which record of a key is the newest: ``newest``) is
    read twice: first to find each key's newest record, then to write only those, as if the topic had
    just been compacted (a read model the design already requires to be the same). The customers
    projection so writes one card per customer instead of every card each customer ever had.
    """
    newest = getattr(projection, "newest", None)
    keep: set[tuple[str, int, int]] | None = None
    if newest is not None:
        winners: dict[str, Any] = {}
        for records in _read(settings, projection.name, bounds, batch_size, advanced):
            newest(records, winners)
        keep = {(record.topic, record.partition, record.offset) for record, *_ in winners.values()}
    replayed = 0
    with psycopg.connect(settings.pg_conninfo()) as conn:
        for records in _read(settings, projection.name, bounds, batch_size, advanced):
            replayed += len(records)
            if keep is not None:
                records = [r for r in records if (r.topic, r.partition, r.offset) in keep]
            if records:
                write_batch(conn, projection, records)
    return replayed


def _read(settings: Settings, name: str, bounds: dict[tuple[str, int], tuple[int, int]], batch_size: int,
          advanced: Callable[[int], None]) -> Iterator[list[Record]]:
    """The records of the partitions from their beginning up to the ends noted, in batches; progress as it goes."""
    ends = {tp: high for tp, (low, high) in bounds.items() if high > low}
    if not ends:
        return
    done = {tp: bounds[tp][0] for tp in ends}
    consumer = projection_consumer(settings, f"touchpoint-rebuild-{name}", eof=True)
    try:
        consumer.assign([TopicPartition(t, p, bounds[t, p][0]) for t, p in ends])
        while ends:
            messages = consumer.consume(batch_size, 0.5)
            reached: set[tuple[str, int]] = set()
            for m in messages:
                error = m.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    reached.add((m.topic(), m.partition()))  # type: ignore[arg-type]  # set on every EOF event
            records = [r for r in records_of(messages, f"rebuild {name}")
                       if (r.topic, r.partition) in ends and r.offset < ends[r.topic, r.partition]]
            if records:
                yield records
            # Progress by position, not by records: compaction gaps and transaction markers count too.
            positions = {(record.topic, record.partition): record.offset + 1 for record in records}
            advanced(sum(position - done[tp] for tp, position in positions.items()))
            done.update(positions)
            for tp in list(ends):
                if tp in reached or done[tp] >= ends[tp]:
                    advanced(ends[tp] - done[tp])
                    done[tp] = ends[tp]
                    del ends[tp]
    finally:
        consumer.close()
