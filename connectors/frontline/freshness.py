"""How fresh the read model behind the lookup API is: per-partition projection lag.

For every projection (``projections.run.PROJECTION_TOPICS``) and every
partition of its topics: the next offset it will read (``projection_offsets``,
written in the projection's own transactions), the partition's end offset in
Kafka and the difference, the records not yet in PostgreSQL; plus the
instant of the newest card (``max(customers.as_of)``, an index lookup) so an
agent screen can say "data as of N ms ago".

Cheap on purpose: one long-lived Kafka client (metadata and ``ListOffsets``
only, no consumer group, so it never disturbs the workers), one short SQL
query, and the answer cached for ``ttl_s`` so any number of agent screens
cost one probe a second. Kafka being unreachable is an answer too (``kafka``
says why, the offsets from PostgreSQL are still there), never a hang beyond
the client's short timeouts: the read model is served from PostgreSQL, so
the lookup keeps working without Kafka.

The API is asynchronous: PostgreSQL is asked through its
:class:`~psycopg_pool.AsyncConnectionPool`, and the blocking Kafka client
runs in a worker thread, so a slow Kafka never stalls the event loop the
lookups share.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from psycopg_pool import AsyncConnectionPool
from starlette.concurrency import run_in_threadpool

from projections.catalog import PROJECTION_TOPICS
from touchpoint.kafka_security import kafka_python_options
from touchpoint.settings import Settings

__all__ = ["LagProbe"]

_STORED = "SELECT projection, topic, partition, next_offset, updated_at FROM projection_offsets"
_NEWEST_CARD = "SELECT max(as_of) FROM customers"


class LagProbe:
    """Per-partition projection lag, cached for ``ttl_s`` seconds; for one event loop.

    :param settings: Kafka bootstrap, topic prefix.
    :param ttl_s: how long one probe's answer is reused.
    """

    def __init__(self, settings: Settings, ttl_s: float = 1.0) -> None:
        self._settings = settings
        self._ttl_s = ttl_s
        self._lock: asyncio.Lock | None = None  # made in the loop that uses it
        self._kafka_lock = threading.Lock()  # the Kafka client is used from worker threads
        self._consumer: KafkaConsumer | None = None
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def lag(self, pool: AsyncConnectionPool) -> dict[str, Any]:
        """The report (see the module docstring); ``pool`` lends a connection for the stored offsets.

        Callers waiting for a probe in progress hold no connection (they wait on the lock first),
        so a slow Kafka cannot drain the pool the lookups need.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self._ttl_s:
                return self._cached[1]
            report = await self._probe(pool)
            self._cached = (time.monotonic(), report)
            return report

    def close(self) -> None:
        """Close the Kafka client (blocking: call it from a worker thread in the API)."""
        with self._kafka_lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None

    def _ends_or_reason(self, topics: list[str]) -> tuple[dict[tuple[str, int], int], str]:
        """End offsets and ``"ok"``, or none and why Kafka did not answer (blocking; in a worker thread)."""
        with self._kafka_lock:
            try:
                return self._ends(topics), "ok"
            except (KafkaError, OSError, ValueError) as exc:
                # A fresh client next time: this one may hold a dead connection.
                if self._consumer is not None:
                    self._consumer.close()
                    self._consumer = None
                return {}, f"unreachable: {type(exc).__name__}: {exc}"

    def _ends(self, topics: list[str]) -> dict[tuple[str, int], int]:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self._settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                client_id="touchpoint-api-lag", request_timeout_ms=3000, bootstrap_timeout_ms=3000,
                isolation_level="read_committed", **kafka_python_options(self._settings))
        consumer = self._consumer
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): end for tp, end in consumer.end_offsets(tps).items()}

    async def _probe(self, pool: AsyncConnectionPool) -> dict[str, Any]:
        now = datetime.now(UTC)
        async with pool.connection() as conn:  # given back before Kafka is asked
            cursor = await conn.execute(_STORED)
            stored = {(projection, topic, partition): (next_offset, updated_at)
                      for projection, topic, partition, next_offset, updated_at in await cursor.fetchall()}
            newest = await (await conn.execute(_NEWEST_CARD)).fetchone()
        as_of: datetime | None = newest[0] if newest else None
        wanted = {name: [self._settings.topic(t) for t in topics] for name, topics in PROJECTION_TOPICS.items()}
        ends, kafka_state = await run_in_threadpool(
            self._ends_or_reason, sorted({t for topics in wanted.values() for t in topics}))
        partitions = []
        for name, topics in wanted.items():
            keys = sorted({(t, p) for t, p in ends if t in topics}
                          | {(t, p) for (proj, t, p) in stored if proj == name})
            for topic, partition in keys:
                next_offset, updated_at = stored.get((name, topic, partition), (0, None))
                end = ends.get((topic, partition))
                partitions.append({
                    "projection": name, "topic": topic, "partition": partition, "next_offset": next_offset,
                    "end_offset": end, "behind": None if end is None else max(0, end - next_offset),
                    "updated_at": updated_at,
                })
        known = [p["behind"] for p in partitions if p["behind"] is not None]
        return {
            "checked_at": now,
            "as_of": as_of,
            "age_ms": None if as_of is None else int((now - as_of).total_seconds() * 1000),
            "behind": sum(known) if ends else None,
            "kafka": kafka_state,
            "partitions": partitions,
        }
